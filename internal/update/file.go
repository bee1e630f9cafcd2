package update

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/faultpoint"
	"github.com/vesselos/vessel/internal/manifest/strictjson"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
)

// StateFile is the slot record, relative to the store root (the data
// partition's root on a machine).
const StateFile = "system/slots.json"

// maxStateSize bounds the record.
const maxStateSize = 1 << 20

// StatePath is the slot record of the store at root.
func StatePath(root string) string { return filepath.Join(root, StateFile) }

// Read reads the slot record. Without one (a machine installed before
// issue 17, or never updated) the state is made from the installed
// system (system/current.json) as slot a, the default, and exists is
// false. A damaged record is an error, never guessed at.
func Read(root string) (s *State, exists bool, err error) {
	b, err := bounded.ReadFile(StatePath(root), maxStateSize)
	if errors.Is(err, os.ErrNotExist) {
		cur, err := registry.ReadCurrent(root)
		if err != nil {
			return nil, false, err
		}
		return FromCurrent(cur), false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var st State
	if err := strictjson.Unmarshal(b, &st); err != nil {
		return nil, false, fmt.Errorf("%s is damaged: %w", StatePath(root), err)
	}
	if err := st.Check(); err != nil {
		return nil, false, fmt.Errorf("%s is damaged: %w", StatePath(root), err)
	}
	return &st, true, nil
}

// FromCurrent is the state of a machine that only has an installed system:
// slot a holds it and is the default.
func FromCurrent(cur *registry.Current) *State {
	return &State{Product: cur.Product, Default: SlotA, Slots: map[string]*Slot{SlotA: {
		Product: cur.Product, Version: cur.Version, Digest: cur.Digest, Signed: cur.Signed, Signer: cur.Signer,
		Source: cur.Source, Images: cur.Images, StagedAt: cur.InstalledAt,
	}}}
}

// Faultpoints of the slot record's writes (internal/faultpoint): the
// crash tests kill the process there.
const (
	// FaultBeforeCommit: everything staged, the record not yet replaced.
	FaultBeforeCommit = faultpoint.UpdateBeforeCommit
	// FaultAfterCommit: the record replaced, current.json and the
	// anti-rollback record not yet.
	FaultAfterCommit = faultpoint.UpdateAfterCommit
)

// Write replaces the slot record crash-safely: a temp file in <root>/tmp,
// fsync, rename over system/slots.json, fsync system/.
func Write(root string, s *State) error {
	if err := s.Check(); err != nil {
		return fmt.Errorf("write %s: %w", StateFile, err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	for _, d := range []string{filepath.Join(root, "tmp"), filepath.Dir(StatePath(root))} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteIn(filepath.Join(root, "tmp"), StatePath(root), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", StateFile, err)
	}
	return nil
}

// lock serializes the update commands of one store (flock on
// system/slots.lock); the initrd runs alone and does not lock.
func lock(root string) (func(), error) {
	if err := os.MkdirAll(filepath.Join(root, "system"), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(root, "system", "slots.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock the slot record: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock the slot record: %w", err)
	}
	return func() { f.Close() }, nil
}

// Modify reads the record under the lock, lets f change it, and writes it
// back if f returns nil.
func Modify(root string, f func(s *State) error) (*State, error) {
	unlock, err := lock(root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, _, err := Read(root)
	if err != nil {
		return nil, err
	}
	if err := f(s); err != nil {
		return nil, err
	}
	return s, Write(root, s)
}

// untagUnreferenced removes the system/ tags (set by install and update)
// that no slot references, so that the store's gc may collect their
// images; it returns the tags removed.
func untagUnreferenced(st *store.Store, s *State) ([]string, error) {
	keep := s.Referenced()
	tags, err := st.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range tags {
		ref := t.Name + ":" + t.Tag
		if len(t.Name) < 7 || t.Name[:7] != "system/" || keep[ref] {
			continue
		}
		if _, err := st.Untag(ref); err != nil {
			return out, err
		}
		out = append(out, ref)
	}
	return out, nil
}

var now = time.Now

func pause(name string) { faultpoint.Pause(name) }
