package mount

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Warm state: with Manager.Warm set, the last user of a layer mount does
// not unmount it but leaves a warm reference <run>/refs/<hex>.@warm (its
// modification time is when the layer went warm), and the tmpfs of fresh
// upper layers on a disk run directory stays too, marked by
// <run>/refs/uppers.@warm. The next container start from the same layer
// then skips the loop device, the mount and (at its end) the unmount: it
// shares the warm mount under the rules of any shared layer mount
// (checkShared: same digest and root hash, and without dm-verity the very
// blob file that was verified, unchanged). A warm mount that fails them is
// replaced by a freshly verified one, not refused.
//
// Warm state goes when a Manager with Warm set next mounts after the grace
// period, and always with Cleanup (vessel down, a supervisor's start):
// "@warm" is no live mount id and "uppers" no layer, so Cleanup drops the
// references and then the unreferenced mounts. Leak checks tell warm state
// from a leak with WarmPaths.
const warmID = "@warm"

// scratchWarm is the name of the warm marker of the uppers tmpfs.
const scratchWarm = "uppers." + warmID

func warmRef(run, hex string) string { return filepath.Join(refsDir(run), hex+"."+warmID) }

// DefaultWarm is how long `vessel run` keeps an unused layer mount warm.
const DefaultWarm = time.Minute

// warm reports whether m keeps unused layer mounts. A rootless vessel's
// mounts live in a user namespace that ends with it: nothing to keep.
func (m *Manager) warm() bool {
	return m.Warm > 0 && os.Geteuid() == 0 && !inUserNS()
}

// touch creates the empty marker file p or sets its modification time to
// now.
func touch(p string) error {
	now := time.Now()
	err := os.Chtimes(p, now, now)
	if errors.Is(err, os.ErrNotExist) {
		if err = os.WriteFile(p, nil, 0o600); errors.Is(err, os.ErrNotExist) {
			if err = os.MkdirAll(filepath.Dir(p), 0o700); err == nil {
				err = os.WriteFile(p, nil, 0o600)
			}
		}
	}
	return err
}

// dropWarm removes the warm reference of the layer mounted at dir and, if
// nobody else uses it, the layer mount. The caller holds the lock.
func (m *Manager) dropWarm(dir string) error {
	hex := filepath.Base(dir)
	if err := os.Remove(warmRef(m.run(), hex)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if m.referenced(hex) {
		return nil
	}
	return releaseLayer(dir)
}

// expireWarm takes down the warm state older than m.Warm. The caller
// holds the lock.
func (m *Manager) expireWarm() error {
	ents, err := os.ReadDir(refsDir(m.run()))
	if err != nil {
		return nil // no references at all
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, "."+warmID) {
			continue
		}
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) < m.Warm {
			continue
		}
		if name == scratchWarm {
			if err := os.Remove(filepath.Join(refsDir(m.run()), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			} else if err := releaseScratch(upperDir(m.run(), "")); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := m.dropWarm(filepath.Join(layersDir(m.run()), strings.TrimSuffix(name, "."+warmID))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// WarmPaths is the warm state under the run directory run, as the set of
// paths that belong to it: warm references, the mount points of warm
// layers (and their mounts) with their layer records, and the uppers tmpfs
// kept warm (the mount, not the uppers in it). Leak checks count what is
// in it as cache, not as a leak; Cleanup removes all of it.
func WarmPaths(run string) map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(refsDir(run))
	for _, e := range ents {
		name := e.Name()
		hex, ok := strings.CutSuffix(name, "."+warmID)
		if !ok {
			continue
		}
		out[filepath.Join(refsDir(run), name)] = true
		if name == scratchWarm {
			out[upperDir(run, "")] = true
			continue
		}
		out[filepath.Join(layersDir(run), hex)] = true
		out[layerRecordPath(run, hex)] = true
	}
	return out
}

// onlyUserAndWarm reports whether the layer hex is referenced by the
// reference ref and its warm reference alone.
func (m *Manager) onlyUserAndWarm(hex, ref string) bool {
	refs, _ := filepath.Glob(filepath.Join(refsDir(m.run()), hex+".*"))
	for _, r := range refs {
		if r != ref && r != warmRef(m.run(), hex) {
			return false
		}
	}
	return true
}
