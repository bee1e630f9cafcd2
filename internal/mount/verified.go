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
