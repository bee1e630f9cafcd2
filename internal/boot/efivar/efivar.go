// Package efivar reads and writes UEFI variables through efivarfs, and
// speaks the UEFI boot manager's language: Boot#### load options,
// BootOrder, BootNext (a one-shot: the firmware deletes it before it
// starts the entry) and BootCurrent. Issue 17's UKI slots are built on it:
// a trial UKI is booted once through BootNext, and a confirmed one goes to
// the front of BootOrder.
//
// A Store is a directory of efivarfs files, "Name-GUID", each holding the
// 4-byte attributes followed by the data. Tests use a plain directory; on
// a plain directory a write is a crash-safe file replacement, on efivarfs
// each write is one SetVariable call (the firmware's variable store is
// fault tolerant).
package efivar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// Dir is where Linux mounts efivarfs.
const Dir = "/sys/firmware/efi/efivars"

// Attributes of the boot manager's variables: non-volatile, boot service
// and runtime access.
const AttrsBoot uint32 = 0x7

const (
	efivarfsMagic = 0xde5e81e4
	fsImmutable   = 0x10 // FS_IMMUTABLE_FL
)

// Global is EFI_GLOBAL_VARIABLE, the owner of the boot manager's variables.
var Global = secureboot.GlobalVariable

// Store is a set of UEFI variables.
type Store struct {
	Dir  string
	real bool // efivarfs (not a plain directory)
}

// ErrNoFirmware: this system was not booted through UEFI (or efivarfs
// cannot be mounted).
var ErrNoFirmware = errors.New("no UEFI variables on this system (not booted through UEFI)")

// Open returns the system's variables, mounting efivarfs at Dir first if
// it is not mounted.
func Open() (*Store, error) {
	if _, err := os.Stat(filepath.Dir(Dir)); err != nil {
		return nil, ErrNoFirmware
	}
	var st unix.Statfs_t
	if err := unix.Statfs(Dir, &st); err != nil || uint32(st.Type) != efivarfsMagic {
		if err := unix.Mount("efivarfs", Dir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return nil, fmt.Errorf("mount efivarfs at %s: %w", Dir, err)
		}
	}
	return &Store{Dir: Dir, real: true}, nil
}

// OpenDir returns the variables in dir: efivarfs or, in tests, a plain
// directory.
func OpenDir(dir string) *Store {
	var st unix.Statfs_t
	real := unix.Statfs(dir, &st) == nil && uint32(st.Type) == efivarfsMagic
	return &Store{Dir: dir, real: real}
}

func (s *Store) file(name string, guid secureboot.GUID) string {
	return filepath.Join(s.Dir, name+"-"+guid.String())
}

// Get returns a variable's attributes and data; os.ErrNotExist (wrapped)
// if it does not exist.
func (s *Store) Get(name string, guid secureboot.GUID) (uint32, []byte, error) {
	b, err := os.ReadFile(s.file(name, guid))
	if err != nil {
		return 0, nil, fmt.Errorf("read UEFI variable %s: %w", name, err)
	}
	if len(b) < 4 {
		return 0, nil, fmt.Errorf("read UEFI variable %s: %d bytes, shorter than its attributes", name, len(b))
	}
	return binary.LittleEndian.Uint32(b), b[4:], nil
}

// Set writes a variable (creating or replacing it).
func (s *Store) Set(name string, guid secureboot.GUID, attrs uint32, data []byte) error {
	buf := binary.LittleEndian.AppendUint32(nil, attrs)
	buf = append(buf, data...)
	path := s.file(name, guid)
	if !s.real {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, buf, 0o644); err != nil {
			return fmt.Errorf("write UEFI variable %s: %w", name, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("write UEFI variable %s: %w", name, err)
		}
		return nil
	}
	mutable(path)
	// One write is one SetVariable: efivarfs needs the whole value at once.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("write UEFI variable %s: %w", name, err)
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return fmt.Errorf("write UEFI variable %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write UEFI variable %s: %w", name, err)
	}
	return nil
}

// Delete removes a variable; a missing one is not an error.
func (s *Store) Delete(name string, guid secureboot.GUID) error {
	path := s.file(name, guid)
	if s.real {
		mutable(path)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("delete UEFI variable %s: %w", name, err)
	}
	return nil
}

// mutable clears efivarfs's immutable flag (set on variables the kernel
// does not know to be safe to change); errors are left to the write.
func mutable(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsImmutable == 0 {
		return
	}
	unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags&^fsImmutable)
}

// EntryName is the variable name of boot entry n: Boot0004.
func EntryName(n uint16) string { return fmt.Sprintf("Boot%04X", n) }

// ParseEntryName parses Boot0004.
func ParseEntryName(name string) (uint16, error) {
	h, ok := strings.CutPrefix(name, "Boot")
	if !ok || len(h) != 4 {
		return 0, fmt.Errorf("boot entry %q: want Boot followed by 4 hex digits", name)
	}
	n, err := strconv.ParseUint(h, 16, 16)
	if err != nil || strings.ToUpper(h) != h {
		return 0, fmt.Errorf("boot entry %q: want Boot followed by 4 upper-case hex digits", name)
	}
	return uint16(n), nil
}

func (s *Store) getUint16(name string) (uint16, bool, error) {
	_, b, err := s.Get(name, Global)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if len(b) != 2 {
		return 0, false, fmt.Errorf("UEFI variable %s: %d bytes, want 2", name, len(b))
	}
	return binary.LittleEndian.Uint16(b), true, nil
}

// BootCurrent is the entry the firmware started for this boot.
func (s *Store) BootCurrent() (uint16, bool, error) { return s.getUint16("BootCurrent") }

// BootNext is the pending one-shot entry, if any.
func (s *Store) BootNext() (uint16, bool, error) { return s.getUint16("BootNext") }

// SetBootNext arms a one-shot boot of entry n: the firmware deletes
// BootNext before it starts the entry, so the boot after that one follows
// BootOrder again whatever happens to it.
func (s *Store) SetBootNext(n uint16) error {
	return s.Set("BootNext", Global, AttrsBoot, binary.LittleEndian.AppendUint16(nil, n))
}

// ClearBootNext disarms a pending one-shot.
func (s *Store) ClearBootNext() error { return s.Delete("BootNext", Global) }

// BootOrder is the firmware's boot order.
func (s *Store) BootOrder() ([]uint16, error) {
	_, b, err := s.Get("BootOrder", Global)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b)%2 != 0 {
		return nil, fmt.Errorf("UEFI variable BootOrder: %d bytes, not a list of 2-byte entries", len(b))
	}
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out, nil
}

// SetBootOrder writes the boot order (one variable write: atomic).
func (s *Store) SetBootOrder(order []uint16) error {
	var b []byte
	for _, n := range order {
		b = binary.LittleEndian.AppendUint16(b, n)
	}
	return s.Set("BootOrder", Global, AttrsBoot, b)
}

// BootFirst puts entry n at the front of BootOrder (keeping the others in
// their order); it writes nothing if n is already first.
func (s *Store) BootFirst(n uint16) error {
	order, err := s.BootOrder()
	if err != nil {
		return err
	}
	if len(order) > 0 && order[0] == n {
		return nil
	}
	out := []uint16{n}
	for _, o := range order {
		if o != n {
			out = append(out, o)
		}
	}
	return s.SetBootOrder(out)
}

var entryFile = regexp.MustCompile(`^Boot([0-9A-F]{4})-` + regexp.QuoteMeta(secureboot.GlobalVariable.String()) + `$`)

// Entries lists the Boot#### entries, in number order.
func (s *Store) Entries() ([]uint16, error) {
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("list UEFI variables: %w", err)
	}
	var out []uint16
	for _, e := range ents {
		if m := entryFile.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.ParseUint(m[1], 16, 16)
			out = append(out, uint16(n))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Entry reads boot entry n.
func (s *Store) Entry(n uint16) (*LoadOption, error) {
	_, b, err := s.Get(EntryName(n), Global)
	if err != nil {
		return nil, err
	}
	o, err := ParseLoadOption(b)
	if err != nil {
		return nil, fmt.Errorf("boot entry %s: %w", EntryName(n), err)
	}
	return o, nil
}

// AddEntry writes o as a boot entry and returns its number: the entry
// that already starts the same file path (rewritten with o's description)
// or the lowest free number. It does not touch BootOrder.
func (s *Store) AddEntry(o *LoadOption) (uint16, error) {
	nums, err := s.Entries()
	if err != nil {
		return 0, err
	}
	used := map[uint16]bool{}
	for _, n := range nums {
		used[n] = true
		if e, err := s.Entry(n); err == nil && string(e.FilePath) == string(o.FilePath) {
			if e.Description == o.Description && e.Attributes == o.Attributes {
				return n, nil
			}
			return n, s.Set(EntryName(n), Global, AttrsBoot, o.Bytes())
		}
	}
	for n := uint16(0); n < 0xffff; n++ {
		if !used[n] {
			return n, s.Set(EntryName(n), Global, AttrsBoot, o.Bytes())
		}
	}
	return 0, errors.New("add boot entry: every Boot#### number is taken")
}

// RemoveEntry deletes boot entry n and takes it out of BootOrder.
func (s *Store) RemoveEntry(n uint16) error {
	order, err := s.BootOrder()
	if err != nil {
		return err
	}
	out := order[:0:0]
	for _, o := range order {
		if o != n {
			out = append(out, o)
		}
	}
	if len(out) != len(order) {
		if err := s.SetBootOrder(out); err != nil {
			return err
		}
	}
	return s.Delete(EntryName(n), Global)
}
