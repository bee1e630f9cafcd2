// Package container runs one container from a stored image and owns the
// container lifecycle: it mounts a fresh root filesystem from the verified
// layers (package mount), writes an OCI runtime bundle for it (package
// ociruntime), runs it, and unmounts and removes everything again, on
// every path. It is the one container runner: `vessel run`, the service
// supervisor and `vessel build` all start containers through Launcher.Run,
// and crash recovery (Launcher.Recover) is its job too.
//
// A container's state, all under the run directory:
//
//	<run>/containers/ID/owner.json   who runs it (Record): the vessel process
//	<run>/containers/ID/runtime.json the runtime process, once started
//	<run>/containers/ID/config.json  the OCI bundle's config
//	<run>/containers/ID/rootfs       its root filesystem's mount point
//	<run>/mounts/ID.json             the mount record (package mount)
//	<run>/runtime/NAME/ID            the runtime's own state (runc, crun)
//
// The owner record is created (atomically, by rename) before anything
// else and removed last, so a vessel killed at any moment leaves a record
// that names what to remove; Recover removes what every dead owner left.
package container

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/faultpoint"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/proc"
)

// Launcher starts containers.
type Launcher struct {
	Mounts  *mount.Manager
	Runtime ociruntime.Runtime
}

// Spec is one container to run.
type Spec struct {
	ID     string       // container id; also names its mount and bundle
	Image  *mount.Image // from mount.LocalImage or mount.SystemImage
	Config ociruntime.Config
	// Upper keeps the writable layer in this directory instead of a fresh
	// one that is thrown away (vessel build uses it to capture changes).
	// Only the upper directory is kept: the bundle goes as always.
	Upper string
	// Prepare, if set, is called with the mounted root filesystem before
	// the bundle is written; an error stops the run (vessel build uses it
	// to copy files into the new layer and note which mount points the
	// runtime will create).
	Prepare func(rootfs string) error
	// Started, if set, is called once the container is about to start
	// (root filesystem mounted, bundle written).
	Started func()
}

// Record is a container's owner record, <run>/containers/ID/owner.json.
type Record struct {
	ID    string  `json:"id"`
	Owner proc.ID `json:"owner"` // the vessel process that runs it
	// Runtime is the OCI runtime that runs it; RuntimeProcess its process
	// (`runc run`), once started.
	Runtime        ociruntime.Runtime `json:"runtime"`
	RuntimeProcess proc.ID            `json:"runtimeProcess,omitzero"`
	// What it runs, for vessel ps --all: the image reference, the
	// process's arguments, when the record was made.
	Image   string    `json:"image,omitempty"`
	Command []string  `json:"command,omitempty"`
	Created time.Time `json:"created,omitzero"`
}

// The owner record is written once; the runtime process goes into a file
// of its own, also written once: replacing a file by rename makes ext4
// flush it (auto_da_alloc), which costs milliseconds per start on a disk
// run directory.
const (
	recordName  = "owner.json"
	runtimeName = "runtime.json"
)

// Dir is the bundle directory of container id under the run directory.
func Dir(run, id string) string { return filepath.Join(containersDir(run), id) }

func containersDir(run string) string { return filepath.Join(run, "containers") }

// newPrefix starts the name of a bundle directory being created.
const newPrefix = ".new-"

// PrivateDirs are the parts of the run directory that describe mounts and
// containers of one mount namespace: a rootless vessel gives each a tmpfs
// of its own in its namespace (see mount.PrivateDirs).
func PrivateDirs(run string) []string {
	return append(mount.PrivateDirs(run), containersDir(run),
		filepath.Join(run, "runtime", "runc"), filepath.Join(run, "runtime", "crun"))
}

func (l *Launcher) run() string {
	if l.Mounts.Run == "" {
		return mount.DefaultRun
	}
	return l.Mounts.Run
}

// Run mounts the image, runs the container in the foreground and returns
// its exit code. The root filesystem is always a fresh writable overlay
// (read-only to the process if Config.ReadOnly); it, the runtime state and
// the bundle directory are removed before Run returns, whatever happened
// (an Upper directory the caller named is kept).
func (l *Launcher) Run(ctx context.Context, s Spec, stdio ociruntime.Stdio) (code int, err error) {
	if !ociruntime.ValidID(s.ID) {
		return -1, fmt.Errorf("container id %q: use a-z, 0-9, '-', '_' and '.'", s.ID)
	}
	run := l.run()
	dir := Dir(run, s.ID)
	// What vessels killed on this machine left goes first (cheap when
	// nothing is there); their runtime-only leftovers wait for Recover.
	if _, _, err := l.removeDead(ctx); err != nil {
		return -1, fmt.Errorf("remove what a killed vessel left: %w", err)
	}
	rec := Record{ID: s.ID, Owner: proc.Self(), Runtime: l.Runtime, Command: s.Config.Args, Created: time.Now().UTC()}
	if s.Image != nil {
		rec.Image = s.Image.Name()
	}
	if err := l.create(ctx, rec); err != nil {
		return -1, err
	}
	mounted := false
	defer func() {
		// Unmount first: removing the directory while the root filesystem
		// is still mounted would delete through it (into a kept upper).
		if mounted {
			if uerr := l.Mounts.Unmount(s.ID); uerr != nil {
				err = errors.Join(err, fmt.Errorf("unmount container %s: %w", s.ID, uerr))
				return // vessel down or the next run retries
			}
			if rerr := os.RemoveAll(filepath.Join(RootsDir(run), s.ID)); rerr != nil {
				err = errors.Join(err, fmt.Errorf("remove container %s: %w", s.ID, rerr))
			}
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove container %s: %w", s.ID, rerr))
		}
	}()
	faultpoint.Pause(faultpoint.ContainerCreated)
	rootfs := filepath.Join(dir, "rootfs")
	opt := mount.Options{Writable: true, Upper: s.Upper}
	if len(s.Config.UIDMappings) > 0 {
		// A container in a user namespace of its own: its root sees the
		// image through idmapped layers, and the runtime, running as the
		// mapped root, must reach the root filesystem, which the private
		// run directory would not let it do (see RootsDir).
		opt.UIDMap, opt.GIDMap = idMappings(s.Config.UIDMappings), idMappings(s.Config.GIDMappings)
		parent, err := makeRootParent(run, s.ID, s.Config.GIDMappings)
		if err != nil {
			return -1, fmt.Errorf("container %s: %w", s.ID, err)
		}
		defer func() {
			if !mounted { // else removed after the unmount, below
				os.RemoveAll(parent)
			}
		}()
		rootfs = filepath.Join(parent, "rootfs")
	}
	if _, err := l.Mounts.Mount(ctx, s.Image, s.ID, rootfs, mount.Self(), opt); err != nil {
		if errors.Is(err, mount.ErrMounted) {
			return -1, fmt.Errorf("container %s already exists (is it still running?); choose another name", s.ID)
		}
		return -1, err
	}
	mounted = true
	if s.Prepare != nil {
		if err := s.Prepare(rootfs); err != nil {
			return -1, err
		}
	}
	cfg := s.Config
	cfg.ID, cfg.Rootfs = s.ID, rootfs
	if cfg.CgroupParent == "" && run != mount.DefaultRun {
		// Ids are unique per run directory: keep other run directories'
		// containers (tests, a second store) out of each other's cgroups.
		cfg.CgroupParent = fmt.Sprintf("/vessel/%x", sha256.Sum256([]byte(run)))[:len("/vessel/")+12]
	}
	if cfg.Hostname == "" {
		cfg.Hostname = s.ID
	}
	spec, err := ociruntime.Spec(cfg)
	if err != nil {
		return -1, err
	}
	if err := ociruntime.WriteBundle(dir, spec); err != nil {
		return -1, err
	}
	if s.Started != nil {
		s.Started()
	}
	var recErr error
	code, err = l.Runtime.RunNotify(ctx, dir, s.ID, stdio, func(pid int) {
		recErr = writeRuntimeProcess(dir, proc.Of(pid))
		faultpoint.Pause(faultpoint.RuntimeStarted)
	})
	if recErr != nil {
		err = errors.Join(err, fmt.Errorf("container %s: record the runtime process: %w", s.ID, recErr))
	}
	return code, err
}

// create makes the bundle directory of rec.ID with its owner record in
// place, atomically: a directory named after the container always has
// one. A directory left by a dead owner is recovered first; one of a live
// owner means the container exists.
func (l *Launcher) create(ctx context.Context, rec Record) error {
	run := l.run()
	if err := os.MkdirAll(containersDir(run), 0o700); err != nil {
		return fmt.Errorf("container %s: %w", rec.ID, err)
	}
	tmp, err := os.MkdirTemp(containersDir(run), newPrefix+rec.ID+"-")
	if err != nil {
		return fmt.Errorf("container %s: %w", rec.ID, err)
	}
	if err := writeRecord(tmp, rec); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("container %s: %w", rec.ID, err)
	}
	for attempt := 0; ; attempt++ {
		err := os.Rename(tmp, Dir(run, rec.ID))
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EEXIST) && !errors.Is(err, syscall.ENOTEMPTY) || attempt > 0 {
			os.RemoveAll(tmp)
			return fmt.Errorf("container %s: %w", rec.ID, err)
		}
		old, rerr := readRecord(Dir(run, rec.ID))
		if rerr == nil && old.Owner.Alive() {
			os.RemoveAll(tmp)
			return fmt.Errorf("container %s already exists (is it still running?); choose another name", rec.ID)
		}
		if _, err := l.remove(ctx, Dir(run, rec.ID), old); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("container %s: remove what a dead vessel left: %w", rec.ID, err)
		}
	}
}

func writeRecord(dir string, rec Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(filepath.Join(dir, recordName), append(b, '\n'), 0o600)
}

func writeRuntimeProcess(dir string, id proc.ID) error {
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(filepath.Join(dir, runtimeName), append(b, '\n'), 0o600)
}

func readRecord(dir string) (Record, error) {
	var rec Record
	b, err := os.ReadFile(filepath.Join(dir, recordName))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s is damaged: %w", filepath.Join(dir, recordName), err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, runtimeName)); err == nil {
		// Written atomically: a damaged one is not ours to trust.
		var id proc.ID
		if json.Unmarshal(b, &id) == nil {
			rec.RuntimeProcess = id
		}
	}
	return rec, nil
}

// remove takes down what container dir's dead owner left, in order: the
// runtime process (it may be about to create the container), the runtime
// container and its processes, the root filesystem mount, the directory.
func (l *Launcher) remove(ctx context.Context, dir string, rec Record) (done []string, err error) {
	id := strings.TrimPrefix(filepath.Base(dir), newPrefix)
	if rec.ID != "" {
		id = rec.ID
	}
	if rec.RuntimeProcess.Alive() {
		if err := rec.RuntimeProcess.Kill(10 * time.Second); err != nil {
			return done, fmt.Errorf("runtime of container %s: %w", id, err)
		}
		done = append(done, fmt.Sprintf("runtime process %d of container %s", rec.RuntimeProcess.Pid, id))
	}
	if !strings.HasPrefix(filepath.Base(dir), newPrefix) && ociruntime.ValidID(id) {
		rt := l.Runtime
		if rec.Runtime.Path != "" {
			rt = rec.Runtime
		}
		found, err := deleteContainer(ctx, rt, id)
		if err != nil {
			return done, err
		}
		if found {
			done = append(done, "container "+id)
		}
		if err := l.Mounts.Unmount(id); err == nil {
			done = append(done, "mount "+id)
		} else if !errors.Is(err, mount.ErrNotMounted) {
			return done, err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return done, err
	}
	if ociruntime.ValidID(id) {
		if p := filepath.Join(RootsDir(l.run()), id); !isMounted(filepath.Join(p, "rootfs")) {
			if err := os.Remove(filepath.Join(p, "rootfs")); err == nil || os.Remove(p) == nil {
				os.Remove(p)
				done = append(done, "root directory "+p)
			}
		}
	}
	return append(done, "bundle "+dir), nil
}

// deleteContainer kills and deletes container id if the runtime knows it,
// and waits until its process has exited.
func deleteContainer(ctx context.Context, rt ociruntime.Runtime, id string) (found bool, err error) {
	states, err := rt.List(ctx)
	if err != nil {
		return false, err
	}
	for _, st := range states {
		if st.ID != id {
			continue
		}
		if st.Status == "running" || st.Status == "created" || st.Status == "paused" {
			_ = rt.Kill(ctx, id, syscall.SIGKILL)
		}
		if err := rt.Delete(ctx, id, true); err != nil {
			return true, err
		}
		return true, waitGone(st.Pid)
	}
	return false, nil
}

// waitGone waits until process pid has exited (a zombie counts: it holds
// no ports or files), killing it directly if the runtime did not.
func waitGone(pid int) error {
	if pid <= 0 {
		return nil
	}
	for i := 0; i < 250; i++ {
		if !proc.Running(pid) {
			return nil
		}
		if i == 50 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d is still running after SIGKILL", pid)
}

// Recover removes what vessel processes that died left in the run
// directory: the containers of dead owners (their runtime process, runtime
// container, mount and bundle directory), runtime containers no live
// vessel owns, and stale mounts (mount.Manager.Cleanup). Containers of
// live owners are left alone, so it is safe while other vessels run. It
// returns a line per thing removed.
func (l *Launcher) Recover(ctx context.Context) ([]string, error) {
	var errs []error
	// List the runtime first: a container it lists was recorded before it
	// was created, so the records read next include its owner.
	states, err := l.Runtime.List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	done, live, err := l.removeDead(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, st := range states {
		if live[st.ID] || strings.HasPrefix(st.ID, ociruntime.ProbePrefix) {
			continue // a live vessel's; probes are Detect's
		}
		found, err := deleteContainer(ctx, l.Runtime, st.ID)
		if err != nil {
			errs = append(errs, err)
		} else if found {
			done = append(done, "container "+st.ID)
		}
	}
	// A runtime killed while it created a container (its vessel died)
	// leaves a state directory the runtime neither lists nor deletes.
	ids, err := l.Runtime.RemoveIncomplete(func(id string) bool { return live[id] })
	for _, id := range ids {
		done = append(done, "incomplete container "+id)
	}
	if err != nil {
		errs = append(errs, err)
	}
	removed, err := l.Mounts.Cleanup()
	done = append(done, removed...)
	if err != nil {
		errs = append(errs, err)
	}
	return done, errors.Join(errs...)
}

// removeDead removes the containers of dead owners (see remove) and
// returns what it removed and the ids of live owners' containers. It
// costs a directory read when there is nothing to do: every Run calls it.
func (l *Launcher) removeDead(ctx context.Context) (done []string, live map[string]bool, _ error) {
	live = map[string]bool{}
	var errs []error
	entries, err := os.ReadDir(containersDir(l.run()))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, live, err
	}
	for _, e := range entries {
		dir := filepath.Join(containersDir(l.run()), e.Name())
		rec, rerr := readRecord(dir)
		if rerr == nil && rec.Owner.Alive() {
			live[rec.ID] = true
			continue
		}
		if errors.Is(rerr, os.ErrNotExist) && strings.HasPrefix(e.Name(), newPrefix) {
			// Being created right now (the record is written before the
			// rename); one of a dead vessel has no runtime or mount yet.
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		}
		removed, err := l.remove(ctx, dir, rec)
		done = append(done, removed...)
		if err != nil {
			errs = append(errs, err)
			live[rec.ID] = true
		}
	}
	return done, live, errors.Join(errs...)
}

// Leftovers lists the run state in run that no live vessel owns: bundle
// directories, fresh uppers, mount records, layer references and mount
// points, runtime containers and probe bundles, mounts under run, and
// processes whose working directory or root lies under run. Warm layer
// mounts (mount.Manager.Warm) recorded as such are cache, not leftovers:
// they are not listed (mount.WarmPaths lists them). After every container
// has ended and Recover ran, it is empty, warm state included; leak checks
// in tests use it so that they look at every run-state directory.
func Leftovers(run string) []string {
	var out []string
	warm := mount.WarmPaths(run)
	for _, d := range append(PrivateDirs(run), filepath.Join(run, "runtime", "probes")) {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if p := filepath.Join(d, e.Name()); !warm[p] {
				out = append(out, p)
			}
		}
	}
	ents, _ := os.ReadDir(RootsDir(run))
	for _, e := range ents {
		out = append(out, filepath.Join(RootsDir(run), e.Name()))
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && (strings.HasPrefix(f[4], run+"/") || strings.HasPrefix(f[4], RootsDir(run)+"/")) && !warm[f[4]] {
				out = append(out, "mount at "+f[4])
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if strings.Trim(e.Name(), "0123456789") != "" {
			continue
		}
		for _, l := range []string{"cwd", "root"} {
			p, err := os.Readlink(filepath.Join("/proc", e.Name(), l))
			if err == nil && (p == run || strings.HasPrefix(p, run+"/")) {
				cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				out = append(out, fmt.Sprintf("process %s (%s) with its %s at %s", e.Name(), strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")), l, p))
			}
		}
	}
	sort.Strings(out)
	return out
}

func idMappings(m []specs.LinuxIDMapping) []mount.IDMapping {
	var out []mount.IDMapping
	for _, e := range m {
		out = append(out, mount.IDMapping{ContainerID: e.ContainerID, HostID: e.HostID, Size: e.Size})
	}
	return out
}

// RootsDir holds the root filesystems of containers in user namespaces
// of their own: <run>-roots/ID/rootfs. The runtime mounts a container's
// root from inside its user namespace, as the mapped root, an unprivileged
// host id, which the private (0700) run directory keeps out. RootsDir is
// 0711 (nobody lists it) and each ID directory is root:MAPPED-ROOT-GID
// 0710, so only that container's root gets through, to its own root
// filesystem alone.
func RootsDir(run string) string { return filepath.Clean(run) + "-roots" }

func makeRootParent(run, id string, gids []specs.LinuxIDMapping) (string, error) {
	var gid uint32
	found := false
	for _, m := range gids {
		if m.ContainerID == 0 && m.Size > 0 {
			gid, found = m.HostID, true
		}
	}
	if !found {
		return "", errors.New("the gid map does not map gid 0")
	}
	roots := RootsDir(run)
	for d := filepath.Dir(roots); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return "", fmt.Errorf("%s is mode %#o: the container's mapped root, an unprivileged host id, cannot pass it to reach %s; let others search it (chmod o+x) or use a run directory under one they can", d, fi.Mode().Perm(), roots)
		}
		if d == "/" || d == "." {
			break
		}
	}
	if err := os.MkdirAll(roots, 0o711); err != nil {
		return "", err
	}
	if err := os.Chmod(roots, 0o711); err != nil {
		return "", err
	}
	p := filepath.Join(roots, id)
	if isMounted(filepath.Join(p, "rootfs")) {
		return "", fmt.Errorf("%s is still mounted (is the container still running?)", filepath.Join(p, "rootfs"))
	}
	if err := os.RemoveAll(p); err != nil {
		return "", err
	}
	if err := os.Mkdir(p, 0o710); err != nil {
		return "", err
	}
	if err := os.Chown(p, 0, int(gid)); err != nil {
		os.Remove(p)
		return "", fmt.Errorf("give %s to the mapped root's group: %w", p, err)
	}
	return p, nil
}

// isMounted reports whether p is a mount point (its device differs from
// its parent's).
func isMounted(p string) bool {
	var a, b syscall.Stat_t
	if syscall.Lstat(p, &a) != nil || syscall.Lstat(filepath.Dir(p), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// Traversable lets every user search (not list) the directories, so that
// a container's mapped root, an unprivileged host id, can reach its root
// filesystem and volumes under them.
func Traversable(dirs ...string) error {
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if m := fi.Mode().Perm(); m&0o011 != 0o011 {
			if err := os.Chmod(d, m|0o011); err != nil {
				return fmt.Errorf("let the mapped root reach %s: %w", d, err)
			}
		}
	}
	return nil
}
