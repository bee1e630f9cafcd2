package mount

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/proc"
)

// DefaultRun is the run directory: per boot, on tmpfs.
const DefaultRun = "/run/vessel"

// Errors callers can branch on.
var (
	ErrMounted    = errors.New("already mounted")
	ErrNotMounted = errors.New("not mounted by vessel")
)

// Manager applies and undoes mount plans. Layer mounts are shared: the
// first plan that needs a layer mounts it, the last one to let go unmounts
// it. All bookkeeping lives under Run and is guarded by one lock file, so
// several vessel processes can mount and unmount at once.
type Manager struct {
	Run  string // run directory (DefaultRun when empty)
	Mode Mode   // how to verify and mount layers (DetectMode when empty)
	// Warm, when positive, keeps a layer mount for that long after its
	// last user lets go (and the tmpfs of fresh uppers on a disk run
	// directory with it), so that the next start from the same layers
	// shares it instead of attaching, mounting and unmounting again. See
	// warm.go for how warm state is recorded and removed. Zero unmounts at
	// once.
	Warm time.Duration

	// mu guards Mode (set lazily) and stats: one Manager is shared by the
	// goroutines of a supervisor. (The lock file orders the bookkeeping
	// between processes, but not these fields for the Go memory model.)
	mu    sync.Mutex
	stats Stats
	// userns holds a user namespace per id map of idmapped mounts.
	userns map[string]*os.File
}

// Stats counts what a Manager did.
type Stats struct {
	LayersMounted int   // layer mounts made (not shared)
	LayersShared  int   // layer mounts reused from another user
	Verified      int   // layers verified in userspace
	VerifiedBytes int64 // bytes read to verify them
	CacheHits     int   // layers whose verification this boot was remembered
}

// Stats returns what m did so far.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// count updates the statistics.
func (m *Manager) count(f func(*Stats)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(&m.stats)
}

// Owner identifies the process a mount belongs to: pid and start time,
// as package proc identifies processes. A mount whose owner has exited is
// stale and Cleanup removes it; the zero Owner (a mount made by `vessel
// mount`) lives until it is unmounted.
type Owner struct {
	Pid       int    `json:"pid,omitempty"`
	StartTime uint64 `json:"startTime,omitempty"`
}

// Self is the calling process as an Owner.
func Self() Owner { return Owner(proc.Self()) }

// Alive reports whether the owner process still runs (always, for the
// zero Owner).
func (o Owner) Alive() bool { return o.Pid == 0 || proc.ID(o).Alive() }

// record is the state file of one applied plan.
type record struct {
	Plan  *Plan `json:"plan"`
	Owner Owner `json:"owner"`
	// Mounted is set once the top mount is in place: only then does
	// undoing the plan unmount its target (which may be a mount point of
	// something else before that). It is kept in a marker file of its own
	// (ID.mounted), made once, so that the record is never rewritten: a
	// rename over an existing file makes ext4 flush it (auto_da_alloc),
	// milliseconds per container start on a disk run directory.
	Mounted bool `json:"mounted"`
}

func (m *Manager) run() string {
	if m.Run == "" {
		return DefaultRun
	}
	return m.Run
}

func (m *Manager) recordFile(id string) string { return filepath.Join(mountsDir(m.run()), id+".json") }

// markerFile exists once the plan's top mount is in place (record.Mounted).
func (m *Manager) markerFile(id string) string {
	return filepath.Join(mountsDir(m.run()), id+".mounted")
}

// Plan computes the plan Mount would apply, without applying it.
func (m *Manager) Plan(img *Image, id, target string, opt Options) (*Plan, error) {
	mode, err := m.mode()
	if err != nil {
		return nil, err
	}
	return NewPlan(m.run(), id, img, target, mode, opt)
}

func (m *Manager) mode() (Mode, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Mode == "" {
		mode, err := DetectMode()
		if err != nil {
			return "", err
		}
		m.Mode = mode
	}
	return m.Mode, nil
}

// Mount mounts img at target (created if missing) on behalf of owner and
// records it under id. Every layer is verified before or while it is
// mounted; a layer that fails is never mounted and the error names the
// image, the layer and the failing block. On any error nothing stays
// mounted.
func (m *Manager) Mount(ctx context.Context, img *Image, id, target string, owner Owner, opt Options) (_ *Plan, err error) {
	if filepath.IsAbs(target) {
		// mount(2) follows symlinks, and the record must name where the
		// mount really is, or undoing it would miss it.
		if target, err = resolvePath(target); err != nil {
			return nil, fmt.Errorf("mount target: %w", err)
		}
	}
	p, err := m.Plan(img, id, target, opt)
	if err != nil {
		return nil, err
	}
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m.warm() {
		if err := m.expireWarm(); err != nil {
			return nil, fmt.Errorf("take down expired warm layer mounts: %w", err)
		}
	}
	// A record that is not marked mounted, seen under the lock, is what a
	// Mount killed part-way left (Mount holds the lock until it is done).
	if _, err := os.Stat(m.recordFile(id)); err == nil {
		r, err := m.readRecord(id)
		if err != nil {
			return nil, err
		}
		if r.Mounted {
			return nil, fmt.Errorf("mount %s: %w", id, ErrMounted)
		}
		if err := m.undo(r); err != nil {
			return nil, fmt.Errorf("mount %s: undo what an interrupted mount left: %w", id, err)
		}
	}
	if r, ok := m.findTarget(p.Target); ok {
		if r.Mounted {
			return nil, fmt.Errorf("%s: %w (mount %s of image %s)", p.Target, ErrMounted, r.Plan.ID, r.Plan.Image)
		}
		if err := m.undo(r); err != nil {
			return nil, fmt.Errorf("%s: undo what an interrupted mount left: %w", p.Target, err)
		}
	}
	if isMountPoint(p.Target) {
		if !p.OwnUp {
			return nil, fmt.Errorf("%s: %w (by something other than vessel)", p.Target, ErrMounted)
		}
		// A container root left mounted by a crash, without a record:
		// vessel made it, so vessel may take it down.
		if err := unmount(p.Target); err != nil {
			return nil, fmt.Errorf("stale mount at %s: %w", p.Target, err)
		}
	}
	// The record goes first, so that a crash part-way leaves something
	// Cleanup can find and undo.
	rec := record{Plan: p, Owner: owner}
	// A marker left by a crash between removing it and the record would
	// claim the new plan mounted.
	if err := os.Remove(m.markerFile(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := m.writeRecord(rec); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if uerr := m.undo(rec); uerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, uerr)
			}
		}
	}()
	for i, lm := range p.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := m.acquire(lm, id); err != nil {
			return nil, fmt.Errorf("image %s: layer %d of %d (%s): %w", img.name, i+1, len(p.Layers), lm.Digest, err)
		}
	}
	if len(p.Layers) == 0 {
		if err := makeEmptyLower(m.run()); err != nil {
			return nil, err
		}
	}
	if p.Upper != "" {
		if p.OwnUp {
			if err := mountScratch(filepath.Dir(p.Upper)); err != nil {
				return nil, err
			}
			if err := os.RemoveAll(p.Upper); err != nil {
				return nil, err
			}
			// Only root may look into container directories (the
			// upper and work directories in them stay 0755: the
			// container's / is the upper directory).
			if err := os.MkdirAll(filepath.Dir(p.Upper), 0o700); err != nil {
				return nil, err
			}
			if err := os.Mkdir(p.Upper, 0o700); err != nil {
				return nil, err
			}
		}
		for _, d := range []string{"upper", "work"} {
			if err := os.MkdirAll(filepath.Join(p.Upper, d), 0o755); err != nil {
				return nil, err
			}
		}
	}
	if err := os.MkdirAll(p.Target, 0o755); err != nil {
		return nil, err
	}
	if p.IDMap != nil {
		// The overlay's root is the upper directory's: the mapped root
		// owns it (the layers' files are mapped by the idmapped mounts).
		uid, _ := root(p.IDMap.UIDs)
		gid, _ := root(p.IDMap.GIDs)
		if err := os.Chown(filepath.Join(p.Upper, "upper"), int(uid), int(gid)); err != nil {
			return nil, fmt.Errorf("image %s: upper directory for the mapped root: %w", img.name, err)
		}
		ns, err := m.usernsFor(p.IDMap)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.name, err)
		}
		if err := applyIdmappedOverlay(p.Overlay, ns); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.name, err)
		}
	} else if err := applyMount(p.Overlay, ""); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.name, err)
	}
	if err := os.WriteFile(m.markerFile(id), nil, 0o600); err != nil {
		return nil, err
	}
	rec.Mounted = true
	return p, nil
}

// Unmount undoes the mount recorded under id.
func (m *Manager) Unmount(id string) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	r, err := m.readRecord(id)
	if err != nil {
		return err
	}
	return m.undo(r)
}

// Moved records that the mount recorded under id was moved (MS_MOVE) to
// target, as the initrd's switch_root moves the host root to "/": later
// listings, and the host's own vessel, see where it is now.
func (m *Manager) Moved(id, target string) error {
	if !filepath.IsAbs(target) {
		return fmt.Errorf("mount %s moved to %q: not an absolute path", id, target)
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	r, err := m.readRecord(id)
	if err != nil {
		return err
	}
	r.Plan.Target = filepath.Clean(target)
	return m.writeRecord(r)
}

// UnmountTarget undoes the vessel mount at target.
func (m *Manager) UnmountTarget(target string) error {
	abs, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	if abs, err = resolvePath(abs); err != nil {
		return err
	}
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	r, ok := m.findTarget(abs)
	if !ok {
		return fmt.Errorf("%s: %w", abs, ErrNotMounted)
	}
	return m.undo(r)
}

// Mounted lists the applied plans with their owners.
func (m *Manager) Mounted() ([]*Plan, []Owner, error) {
	rs, err := m.records()
	if err != nil {
		return nil, nil, err
	}
	var ps []*Plan
	var owners []Owner
	for _, r := range rs {
		ps = append(ps, r.Plan)
		owners = append(owners, r.Owner)
	}
	return ps, owners, nil
}

// Cleanup removes what crashed vessel processes left: mounts whose owner
// has exited, layer references without a mount record, layer mounts
// nobody references, and verity devices. It returns what it removed.
func (m *Manager) Cleanup() ([]string, error) {
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	rs, err := m.records()
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	live := map[string]bool{}
	for _, r := range rs {
		// Not yet marked mounted: its Mount was killed part-way (a live
		// one would hold the lock), whoever the owner is.
		if r.Owner.Alive() && r.Mounted {
			live[r.Plan.ID] = true
			continue
		}
		if err := m.undo(r); err != nil {
			errs = append(errs, err)
			live[r.Plan.ID] = true
			continue
		}
		done = append(done, "mount "+r.Plan.ID+" at "+r.Plan.Target)
	}
	refs, _ := os.ReadDir(refsDir(m.run()))
	for _, ref := range refs {
		if _, id, ok := parseRef(ref.Name()); !ok || !live[id] {
			os.Remove(filepath.Join(refsDir(m.run()), ref.Name()))
		}
	}
	entries, _ := os.ReadDir(layersDir(m.run()))
	for _, e := range entries {
		if m.referenced(e.Name()) {
			continue
		}
		if err := releaseLayer(filepath.Join(layersDir(m.run()), e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, "layer "+e.Name())
	}
	if err := releaseScratch(upperDir(m.run(), "")); err != nil {
		errs = append(errs, err)
	}
	return done, errors.Join(errs...)
}

// undo unmounts what a (possibly partly applied) plan mounted and drops
// its layer references. It keeps going after an error and reports all.
func (m *Manager) undo(r record) error {
	p := r.Plan
	var errs []error
	// A container root (OwnUp) is vessel's by construction; a target the
	// user named is unmounted only once vessel has mounted it.
	if (r.Mounted || p.OwnUp) && isMountPoint(p.Target) {
		if err := unmount(p.Target); err != nil {
			// The rest would fail too while the overlay holds the layers.
			return fmt.Errorf("unmount %s: %w", p.Target, err)
		}
	}
	for _, lm := range p.Layers {
		if err := m.release(lm, p.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if p.OwnUp {
		if err := os.RemoveAll(p.Upper); err != nil {
			errs = append(errs, err)
		} else if m.warm() && isMountPoint(filepath.Dir(p.Upper)) {
			// kept warm with the layers, recorded as such
			if err := touch(filepath.Join(refsDir(m.run()), scratchWarm)); err != nil {
				errs = append(errs, err)
			}
		} else if err := releaseScratch(filepath.Dir(p.Upper)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(m.markerFile(p.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		} else if err := os.Remove(m.recordFile(p.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Layer references are empty files <run>/refs/<layer hex>.<mount id>:
// one flat directory, so taking and dropping a reference costs one file
// operation and no directory is made per layer but its mount point.
func refsDir(run string) string { return filepath.Join(run, "refs") }

func refName(lm LayerMount, id string) string { return filepath.Base(lm.Dir) + "." + id }

// parseRef splits a reference file name into layer hex and mount id.
func parseRef(name string) (hex, id string, ok bool) {
	hex, id, ok = strings.Cut(name, ".")
	return hex, id, ok && len(hex) == 64 && id != ""
}

// referenced reports whether any reference names the layer.
func (m *Manager) referenced(hex string) bool {
	refs, _ := filepath.Glob(filepath.Join(refsDir(m.run()), hex+".*"))
	return len(refs) > 0
}

// acquire takes a reference on a layer mount, mounting it if it is the
// first.
func (m *Manager) acquire(lm LayerMount, id string) error {
	ref := filepath.Join(refsDir(m.run()), refName(lm, id))
	if err := os.WriteFile(ref, nil, 0o600); errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(refsDir(m.run()), 0o700); err == nil {
			err = os.WriteFile(ref, nil, 0o600)
		}
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if isMountPoint(lm.Dir) {
		err := m.checkShared(lm)
		if err == nil {
			m.count(func(s *Stats) { s.LayersShared++ })
			return nil
		}
		// A warm mount nobody uses that this image may not share (its
		// blob changed or went, another root hash) is replaced by a
		// freshly verified one; one in use is refused.
		hex := filepath.Base(lm.Dir)
		if _, werr := os.Stat(warmRef(m.run(), hex)); werr != nil || !m.onlyUserAndWarm(hex, ref) {
			os.Remove(ref)
			return err
		}
		if derr := os.Remove(warmRef(m.run(), hex)); derr != nil && !errors.Is(derr, os.ErrNotExist) {
			os.Remove(ref)
			return derr
		}
		if derr := releaseLayer(lm.Dir); derr != nil {
			os.Remove(ref)
			return fmt.Errorf("%w (and taking down the warm layer mount: %v)", err, derr)
		}
	}
	if err := os.MkdirAll(layersDir(m.run()), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(lm.Dir, 0o755); err != nil {
		return err
	}
	if err := m.mountLayer(lm); err != nil {
		os.Remove(ref)
		return err
	}
	m.count(func(s *Stats) { s.LayersMounted++ })
	return nil
}

// release drops a reference; the last one unmounts the layer.
func (m *Manager) release(lm LayerMount, id string) error {
	if m.warm() {
		// The warm reference first: the layer is never unreferenced.
		if err := touch(warmRef(m.run(), filepath.Base(lm.Dir))); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(refsDir(m.run()), refName(lm, id))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if m.referenced(filepath.Base(lm.Dir)) {
		return nil
	}
	return releaseLayer(lm.Dir)
}

// releaseLayer unmounts a layer nobody references and removes its mount
// point (<run>/layers/<hex>).
func releaseLayer(dir string) error {
	if isMountPoint(dir) {
		if err := unmount(dir); err != nil {
			return fmt.Errorf("unmount layer %s: %w", filepath.Base(dir), err)
		}
	}
	if err := removeVerity(filepath.Base(dir)); err != nil {
		return err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// The record of what the mount was verified against goes with it.
	if err := os.Remove(layerRecordPath(filepath.Dir(filepath.Dir(dir)), filepath.Base(dir))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (m *Manager) lock() (func(), error) {
	if err := os.MkdirAll(mountsDir(m.run()), 0o700); err != nil {
		return nil, fmt.Errorf("run directory: %w", err)
	}
	if err := privateDir(m.run()); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(m.run(), "lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func (m *Manager) writeRecord(r record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(m.recordFile(r.Plan.ID), b, 0o600)
}

func (m *Manager) readRecord(id string) (record, error) {
	var r record
	b, err := os.ReadFile(m.recordFile(id))
	if errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("mount %s: %w", id, ErrNotMounted)
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Plan == nil {
		return r, fmt.Errorf("mount record %s is damaged (%v); remove it and unmount by hand", m.recordFile(id), err)
	}
	for i := range r.Plan.Layers {
		r.Plan.Layers[i].Dir = filepath.Clean(r.Plan.Layers[i].Dir)
	}
	if _, err := os.Stat(m.markerFile(id)); err == nil {
		r.Mounted = true
	}
	return r, nil
}

func (m *Manager) records() ([]record, error) {
	entries, err := os.ReadDir(mountsDir(m.run()))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var rs []record
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		r, err := m.readRecord(id)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Plan.ID < rs[j].Plan.ID })
	return rs, nil
}

func (m *Manager) findTarget(target string) (record, bool) {
	rs, _ := m.records()
	for _, r := range rs {
		if r.Plan.Target == target {
			return r, true
		}
	}
	return record{}, false
}

// resolvePath resolves the symlinks of the longest existing prefix of the
// absolute path p; the missing rest is kept as it is.
func resolvePath(p string) (string, error) {
	p = filepath.Clean(p)
	r, err := filepath.EvalSymlinks(p)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if _, lerr := os.Lstat(p); lerr == nil {
		return "", fmt.Errorf("%s is a dangling symlink", p)
	}
	parent := filepath.Dir(p)
	if parent == p {
		return p, nil
	}
	rp, err := resolvePath(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(rp, filepath.Base(p)), nil
}

// privateDir makes the run directory dir 0700 if it is more open: it holds
// layer mounts and container roots, which only root (or, rootless, the
// user) may reach.
func privateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
		return fmt.Errorf("run directory: make it private (0700): %w", err)
	}
	return nil
}
