package mount

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/verity"
)

// ErrVerify is wrapped by every error that rejects a layer's content.
var ErrVerify = errors.New("layer failed verification")

// verifiedRecord remembers that a blob file passed verification. It is
// valid only while the file keeps its identity (device, inode, size, change
// time) and only for the boot that wrote it: the records live under /run,
// and the boot id is checked too in case the run directory is persistent.
type verifiedRecord struct {
	Digest string `json:"digest"`
	Root   string `json:"root"`
	Boot   string `json:"boot"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Size   int64  `json:"size"`
	Mtime  int64  `json:"mtimeNs"`
	Ctime  int64  `json:"ctimeNs"`
}

func recordFor(f *os.File, lm LayerMount) (verifiedRecord, error) {
	fi, err := f.Stat()
	if err != nil {
		return verifiedRecord{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return verifiedRecord{}, fmt.Errorf("stat %s: no file identity", f.Name())
	}
	return verifiedRecord{
		Digest: lm.Digest,
		Root:   fmt.Sprintf("%x", lm.geometry.Root),
		Boot:   bootID(),
		Dev:    uint64(st.Dev),
		Ino:    st.Ino,
		Size:   st.Size,
		Mtime:  st.Mtim.Nano(),
		Ctime:  st.Ctim.Nano(),
	}, nil
}

var bootID = sync.OnceValue(func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
})

func (m *Manager) recordPath(lm LayerMount) string {
	return filepath.Join(verifiedDir(m.run()), strings.ReplaceAll(lm.Digest, ":", "-")+".json")
}

// verifyLayer checks the open blob f against the layer's verity tree,
// unless this boot already verified the very same file. Statistics go to
// m.Stats.
func (m *Manager) verifyLayer(f *os.File, lm LayerMount) error {
	want, err := recordFor(f, lm)
	if err != nil {
		return err
	}
	if b, err := os.ReadFile(m.recordPath(lm)); err == nil {
		var got verifiedRecord
		if json.Unmarshal(b, &got) == nil && got == want {
			m.count(func(s *Stats) { s.CacheHits++ })
			return nil
		}
	}
	g := lm.geometry
	if want.Size < g.DataSize+verity.TreeSize(g.Params) {
		return fmt.Errorf("%w: blob is %d bytes, shorter than its image and verity tree (%d)", ErrVerify, want.Size, g.DataSize+verity.TreeSize(g.Params))
	}
	if err := verity.Verify(f, f, g.Params, g.Root); err != nil {
		return fmt.Errorf("%w: %w", ErrVerify, err)
	}
	// A write during verification may have come after the blocks it
	// changed were read: the identity must be the same as before.
	if after, err := recordFor(f, lm); err != nil || after != want {
		return fmt.Errorf("%w: the blob changed while it was being verified", ErrVerify)
	}
	m.count(func(s *Stats) { s.Verified++; s.VerifiedBytes += want.Size })
	b, err := json.Marshal(want)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(verifiedDir(m.run()), 0o700); err != nil {
		return err
	}
	// A lost record only costs a second verification.
	_ = atomicfile.WriteVolatile(m.recordPath(lm), b, 0o600)
	return nil
}

// Layer mount records: <run>/layer-records/<hex>.json says what the shared
// mount <run>/layers/<hex> was verified against (digest, root hash) and the
// identity of the blob file descriptor that was verified and then attached.
// A layer mount is shared only with images that name the same digest and
// root hash, and (without dm-verity) only while the blob file still has
// that identity.
type layerRecord struct {
	verifiedRecord
	// Blob is the path the mounted file was opened by: a user from another
	// store (the same digest, another file) shares the mount as long as
	// this file is unchanged, since this file is what the mount reads.
	Blob string `json:"blob"`
}

func layerRecordPath(run, hex string) string {
	return filepath.Join(layerRecordsDir(run), hex+".json")
}

// writeLayerRecord records what the layer mount of lm is about to serve:
// the blob f (the descriptor that was verified) and lm's root hash.
func (m *Manager) writeLayerRecord(f *os.File, lm LayerMount) error {
	rec, err := recordFor(f, lm)
	if err != nil {
		return err
	}
	b, err := json.Marshal(layerRecord{verifiedRecord: rec, Blob: lm.Blob})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(layerRecordsDir(m.run()), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteVolatile(layerRecordPath(m.run(), filepath.Base(lm.Dir)), b, 0o600)
}

// checkShared decides whether a new user (the image lm comes from) may
// share the layer already mounted at lm.Dir: the mount must have been
// verified against the same digest and root hash, and without dm-verity
// the blob file must be unchanged since then (same device, inode, size,
// mtime and ctime), still owned by this user and writable by nobody else.
// That is the file the mount reads, which is the new user's own blob unless
// it comes from another store (then it holds the same bytes, by digest).
// A layer mount without a record (a crashed mount) is refused: Cleanup, or
// unmounting its users, removes it.
func (m *Manager) checkShared(lm LayerMount) error {
	b, err := os.ReadFile(layerRecordPath(m.run(), filepath.Base(lm.Dir)))
	var got layerRecord
	if err == nil {
		err = json.Unmarshal(b, &got)
	}
	if err != nil {
		return fmt.Errorf("%w: the layer is mounted at %s without a record of what it was verified against (%v): unmount its users (vessel ps, vessel mount) and try again", ErrVerify, lm.Dir, err)
	}
	root := fmt.Sprintf("%x", lm.geometry.Root)
	if got.Digest != lm.Digest || got.Root != root {
		return fmt.Errorf("%w: the mounted layer %s was verified against verity root hash %s; this image's manifest says %s", ErrVerify, got.Digest, got.Root, root)
	}
	if !lm.VerifyInUserspace {
		return nil // the kernel checks every block read against the root hash
	}
	f, err := openBlob(got.Blob)
	if err != nil {
		return fmt.Errorf("%w: the blob the mounted layer reads: %w", ErrVerify, err)
	}
	defer f.Close()
	if err := checkBlobFile(f); err != nil {
		return err
	}
	now, err := recordFor(f, lm)
	if err != nil {
		return err
	}
	if now != got.verifiedRecord {
		return fmt.Errorf("%w: blob %s changed since its mounted layer was verified (was inode %d, %d bytes, ctime %d; now inode %d, %d bytes, ctime %d): the containers using it may see the change; stop them and run again", ErrVerify, got.Blob, got.Ino, got.Size, got.Ctime, now.Ino, now.Size, now.Ctime)
	}
	return nil
}

// openBlob opens a layer blob read-only without following a symlink or
// blocking on a FIFO.
func openBlob(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open layer blob: %w", err)
	}
	return f, nil
}

// checkBlobFile refuses a blob file that someone other than the mounting
// user could change after it is verified in userspace: it must be a
// regular file owned by this (effective) user, root as a rule (inside a
// rootless user namespace the user is root), and writable by neither group
// nor others.
func checkBlobFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: blob %s is not a regular file (%s)", ErrVerify, f.Name(), fi.Mode().Type())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat %s: no owner", f.Name())
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("%w: blob %s is owned by uid %d, not by uid %d that mounts it: its owner could change it after it is verified; chown it to %d (or use a kernel with dm-verity)", ErrVerify, f.Name(), st.Uid, uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: blob %s is writable by group or others (mode %04o): they could change it after it is verified; chmod go-w it", ErrVerify, f.Name(), perm)
	}
	return nil
}
