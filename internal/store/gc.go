package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// GCResult reports what a collection removed.
type GCResult struct {
	Removed []digest.Digest `json:"removed"`
	Bytes   int64           `json:"bytes"`
}

// GC deletes every blob that no index entry reaches (through manifests,
// their configs and layers, nested indexes, and manifests whose subject is a
// kept manifest, such as signatures), and stale temp files. It waits for
// in-flight writers (see Writer) and holds them off while it runs.
func (s *Store) GC() (GCResult, error) {
	var res GCResult
	unlockGC, err := s.lockFile("gc.lock", unix.LOCK_EX)
	if err != nil {
		return res, err
	}
	defer unlockGC()
	err = s.withLock(func() error {
		idx, err := s.readIndex()
		if err != nil {
			return fmt.Errorf("gc: %w (nothing was deleted)", err)
		}
		keep := map[digest.Digest]bool{}
		var walk func(d ocispec.Descriptor) error
		walk = func(d ocispec.Descriptor) error {
			if keep[d.Digest] {
				return nil
			}
			keep[d.Digest] = true
			switch d.MediaType {
			case ocispec.MediaTypeImageManifest:
				m, err := s.Manifest(d.Digest)
				if errors.Is(err, ErrNotFound) {
					return nil
				}
				if err != nil {
					return err
				}
				keep[m.Config.Digest] = true
				for _, l := range m.Layers {
					keep[l.Digest] = true
				}
			case ocispec.MediaTypeImageIndex:
				b, err := s.ReadBlob(d)
				if errors.Is(err, ErrNotFound) {
					return nil
				}
				if err != nil {
					return err
				}
				sub, err := ParseIndex(b)
				if err != nil {
					return fmt.Errorf("index %s: %w", d.Digest, err)
				}
				for _, m := range sub.Manifests {
					if err := walk(m); err != nil {
						return err
					}
				}
			}
			return nil
		}
		for _, d := range idx.Manifests {
			if err := walk(d); err != nil {
				return fmt.Errorf("gc: %w (nothing was deleted)", err)
			}
		}
		if err := s.keepReferrers(keep, walk); err != nil {
			return fmt.Errorf("gc: %w (nothing was deleted)", err)
		}
		dir := filepath.Join(s.layout(), "blobs", "sha256")
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			if keep[d] {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("gc: remove %s: %w", d, err)
			}
			res.Removed = append(res.Removed, d)
			res.Bytes += info.Size()
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	s.cleanTemp(time.Hour)
	return res, nil
}

// keepReferrers marks manifests whose subject is a kept manifest (signatures
// and other referrers), repeating until nothing new is found.
func (s *Store) keepReferrers(keep map[digest.Digest]bool, walk func(ocispec.Descriptor) error) error {
	dir := filepath.Join(s.layout(), "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for changed := true; changed; {
		changed = false
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			if keep[d] || e.Type()&os.ModeType != 0 {
				continue
			}
			info, err := e.Info()
			if err != nil || info.Size() > 64<<10 {
				continue // referrers are small manifests; layers are not
			}
			m, err := s.Manifest(d)
			if err != nil || m.Subject == nil || !keep[m.Subject.Digest] {
				continue
			}
			if err := walk(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d}); err != nil {
				return err
			}
			changed = true
		}
	}
	return nil
}

// cleanTemp removes temp files older than age left by killed writers.
func (s *Store) cleanTemp(age time.Duration) {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > age {
			os.RemoveAll(filepath.Join(s.tmpDir(), e.Name()))
		}
	}
}
