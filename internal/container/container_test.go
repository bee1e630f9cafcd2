package container

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/store"
)

type env struct {
	root, run string
	img       *mount.Image
	rt        ociruntime.Runtime
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running containers needs root (CI runs as root)")
	}
	for _, tool := range []string{"runc", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it)", tool)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("busybox-static is not installed (make deps installs it)")
	}
	e := &env{root: t.TempDir(), run: t.TempDir()}
	s, err := store.Open(e.root)
	if err != nil {
		t.Fatal(err)
	}
	base, top := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(base, "bin"), 0o755)
	os.WriteFile(filepath.Join(base, "bin/busybox"), bb, 0o755)
	for _, l := range []string{"sh", "true", "cat", "sleep", "echo"} {
		os.Symlink("busybox", filepath.Join(base, "bin", l))
	}
	os.MkdirAll(filepath.Join(top, "etc"), 0o755)
	os.WriteFile(filepath.Join(top, "etc/motd"), []byte("from the top layer\n"), 0o644)
	epoch := int64(1700000000)
	if _, err := image.Create(context.Background(), s, "bb:1", []string{base, top}, image.CreateOptions{Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	if e.img, err = mount.LocalImage(s, "bb:1"); err != nil {
		t.Fatal(err)
	}
	if e.rt, _, err = ociruntime.Detect(context.Background(), "", filepath.Join(e.run, "runtime")); err != nil {
		t.Skipf("no working OCI runtime: %v", err)
	}
	t.Cleanup(func() { e.assertNoLeaks(t) })
	return e
}

// launcher returns a launcher with its own mount manager, as a separate
// vessel process would have.
func (e *env) launcher() *Launcher {
	return &Launcher{Mounts: &mount.Manager{Run: e.run}, Runtime: e.rt}
}

func (e *env) assertNoLeaks(t *testing.T) {
	t.Helper()
	for _, l := range Leftovers(e.run) {
		t.Errorf("left behind: %s", l)
	}
	for _, l := range mount.WaitLoopsGone(e.root, 2*time.Second) {
		t.Errorf("loop device left behind: %s", l)
	}
	if states, _ := e.rt.List(context.Background()); len(states) != 0 {
		t.Errorf("runtime state left: %+v", states)
	}
}

// A run that keeps its upper directory (every build step does) keeps
// only that: the bundle directory goes like any other's.
func TestRunWithKeptUpperRemovesItsBundle(t *testing.T) {
	e := newEnv(t)
	upper := filepath.Join(t.TempDir(), "kept")
	code, err := e.launcher().Run(context.Background(), Spec{ID: "kept", Image: e.img, Upper: upper, Config: ociruntime.Config{
		Args: []string{"/bin/sh", "-c", "echo built > /out"},
	}}, ociruntime.Stdio{})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "upper", "out")); err != nil || string(b) != "built\n" {
		t.Errorf("kept upper holds out = %q (%v)", b, err)
	}
	if _, err := os.Stat(Dir(e.run, "kept")); !os.IsNotExist(err) {
		t.Errorf("bundle directory of a run with a kept upper: %v, want it removed", err)
	}
}

func TestRunSeesImageAndExitCode(t *testing.T) {
	e := newEnv(t)
	var out bytes.Buffer
	code, err := e.launcher().Run(context.Background(), Spec{ID: "t1", Image: e.img, Config: ociruntime.Config{
		Args: []string{"/bin/sh", "-c", "cat /etc/motd; echo hi > /new; cat /new; exit 7"},
	}}, ociruntime.Stdio{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	if code != 7 || out.String() != "from the top layer\nhi\n" {
		t.Errorf("exit %d, output %q", code, out.String())
	}
	// A bad command is the runtime's error, and still cleans up.
	_, err = e.launcher().Run(context.Background(), Spec{ID: "t2", Image: e.img, Config: ociruntime.Config{Args: []string{"/nonexistent"}}}, ociruntime.Stdio{})
	if err == nil || !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("missing binary: %v", err)
	}
	if _, err := e.launcher().Run(context.Background(), Spec{ID: "Bad/ID", Image: e.img}, ociruntime.Stdio{}); err == nil {
		t.Error("invalid id accepted")
	}
}

func TestConcurrentRunsShareLayers(t *testing.T) {
	e := newEnv(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	release := filepath.Join(t.TempDir(), "go")
	os.MkdirAll(release, 0o755)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := e.launcher().Run(context.Background(), Spec{ID: fmt.Sprintf("c%02d", i), Image: e.img, Config: ociruntime.Config{
				Args:   []string{"/bin/sh", "-c", "while [ ! -e /go/now ]; do sleep 0.05; done"},
				Mounts: []ociruntime.Bind{{Source: release, Target: "/go", ReadOnly: true}},
			}}, ociruntime.Stdio{})
			if err == nil && code != 0 {
				err = fmt.Errorf("container %d exited %d", i, code)
			}
			errs <- err
		}()
	}
	// Wait until all 20 root filesystems are mounted, then count mounts.
	count := func() (layerMounts, overlays int) {
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(mi), "\n") {
			f := strings.Fields(l)
			if len(f) < 5 {
				continue
			}
			switch point := f[4]; {
			case strings.HasPrefix(point, filepath.Join(e.run, "layers")):
				layerMounts++
			case strings.HasPrefix(point, filepath.Join(e.run, "containers")) && strings.Contains(l, " - overlay "):
				overlays++
			}
		}
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	layerMounts, overlays := count()
	for overlays < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d containers mounted", overlays, n)
		}
		time.Sleep(20 * time.Millisecond)
		layerMounts, overlays = count()
	}
	if layerMounts != e.img.Layers() || overlays != n {
		t.Errorf("%d containers: %d layer mounts (want %d, shared) and %d overlays (want %d)", n, layerMounts, e.img.Layers(), overlays, n)
	}
	os.WriteFile(filepath.Join(release, "now"), nil, 0o644)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestNoLeaksAfterManyCycles(t *testing.T) {
	e := newEnv(t)
	cycles := 200
	if testing.Short() {
		cycles = 20
	}
	l := e.launcher()
	for i := 0; i < cycles; i++ {
		code, err := l.Run(context.Background(), Spec{ID: "cycle", Image: e.img, Config: ociruntime.Config{Args: []string{"/bin/true"}}}, ociruntime.Stdio{})
		if err != nil || code != 0 {
			t.Fatalf("cycle %d: exit %d, %v", i, code, err)
		}
	}
	if st := l.Mounts.Stats(); st.Verified != e.img.Layers() || st.CacheHits != (cycles-1)*e.img.Layers() {
		t.Errorf("%d cycles: %+v, want each layer verified once and cached after", cycles, st)
	}
	// Cancelling mid-run kills the container and still cleans up.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := l.Run(ctx, Spec{ID: "cancel", Image: e.img, Config: ociruntime.Config{Args: []string{"/bin/sleep", "60"}}}, ociruntime.Stdio{}); err == nil {
		t.Error("a cancelled run reported success")
	}
}

// Layer mounts kept warm after a run (mount.Manager.Warm) are cache, not
// leftovers, as long as they are recorded as warm: a reference of nobody
// still is a leak, and Recover takes the warm state down.
func TestWarmLayersAreNoLeftovers(t *testing.T) {
	e := newEnv(t)
	l := e.launcher()
	l.Mounts.Warm = time.Hour
	code, err := l.Run(context.Background(), Spec{ID: "warm", Image: e.img, Config: ociruntime.Config{Args: []string{"/bin/true"}}}, ociruntime.Stdio{})
	if err != nil || code != 0 {
		t.Skipf("no working OCI runtime: exit %d, %v", code, err)
	}
	var warmRefs []string
	for p := range mount.WarmPaths(e.run) {
		if strings.HasSuffix(p, ".@warm") && !strings.HasSuffix(p, "uppers.@warm") {
			warmRefs = append(warmRefs, p)
		}
	}
	if len(warmRefs) == 0 {
		t.Fatalf("no warm layer after the run: %v", mount.WarmPaths(e.run))
	}
	if left := Leftovers(e.run); len(left) != 0 {
		t.Errorf("warm layers counted as leftovers: %v", left)
	}
	// The same layer mount with a reference of a mount that does not
	// exist (instead of its warm reference) is a leak.
	ghost := strings.TrimSuffix(warmRefs[0], ".@warm") + ".ghost"
	if err := os.Rename(warmRefs[0], ghost); err != nil {
		t.Fatal(err)
	}
	left := strings.Join(Leftovers(e.run), "\n")
	if !strings.Contains(left, ghost) || !strings.Contains(left, "mount at "+filepath.Join(e.run, "layers", filepath.Base(strings.TrimSuffix(ghost, ".ghost")))) {
		t.Errorf("a layer mount referenced by nobody alive is not reported: %s", left)
	}
	if _, err := l.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := mount.WarmPaths(e.run); len(w) != 0 {
		t.Errorf("warm state after Recover: %v", w)
	}
	// newEnv's clean-up checks that nothing at all is left.
}
