package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/proc"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

func TestConfigFromManifestAndImage(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/bin/app"}, Cmd: []string{"--serve"}, Env: []string{"PATH=/bin", "MODE=prod"}, User: "10:10", WorkingDir: "/srv"}
	for _, tc := range []struct {
		def  manifest.Service
		args string
	}{
		{manifest.Service{Name: "a"}, "/bin/app --serve"},
		{manifest.Service{Name: "a", Args: []string{"--debug"}}, "/bin/app --debug"},
		{manifest.Service{Name: "a", Command: []string{"/bin/sh", "-c"}, Args: []string{"true"}}, "/bin/sh -c true"},
	} {
		cfg, err := Config(tc.def, img)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(cfg.Args, " "); got != tc.args {
			t.Errorf("%+v: args %q, want %q", tc.def, got, tc.args)
		}
	}
	cfg, err := Config(manifest.Service{Name: "web", Env: []string{"MODE=dev", "X=1"}, User: "0", Network: "private", Capabilities: []string{"NET_BIND_SERVICE"}, ReadOnly: true}, img)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Env, " ") != "PATH=/bin MODE=dev X=1" || cfg.User != "0" || cfg.Cwd != "/srv" || cfg.Hostname != "web" ||
		cfg.Network != ociruntime.NetworkNone || strings.Join(cfg.Capabilities, ",") != "NET_BIND_SERVICE" || !cfg.ReadOnly {
		t.Errorf("config %+v", cfg)
	}
	// Capabilities: none (noCapabilities) is an empty non-nil list (the
	// runtime's "exactly these"); a manifest from before it, with no list,
	// keeps the default set (nil).
	none, err := Config(manifest.Service{Name: "a", NoCapabilities: true}, img)
	if err != nil {
		t.Fatal(err)
	}
	if none.Capabilities == nil || len(none.Capabilities) != 0 {
		t.Errorf("noCapabilities: %#v, want an empty list", none.Capabilities)
	}
	old, err := Config(manifest.Service{Name: "a"}, img)
	if err != nil {
		t.Fatal(err)
	}
	if old.Capabilities != nil {
		t.Errorf("old manifest: %#v, want nil (the default set)", old.Capabilities)
	}
	if _, err := Config(manifest.Service{Name: "x"}, ocispec.ImageConfig{}); err == nil || !strings.Contains(err.Error(), "service x: no command") {
		t.Errorf("no command anywhere: %v", err)
	}
}

func TestRestartPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		r      result
		want   bool
	}{
		{manifest.RestartAlways, result{code: 0}, true},
		{manifest.RestartAlways, result{code: 1}, true},
		{manifest.RestartOnFailure, result{code: 0}, false},
		{manifest.RestartOnFailure, result{code: 2}, true},
		{manifest.RestartOnFailure, result{err: errors.New("mount failed")}, true},
		{manifest.RestartNever, result{code: 1}, false},
	} {
		if got := restarts(tc.policy, tc.r); got != tc.want {
			t.Errorf("restarts(%s, %+v) = %v", tc.policy, tc.r, got)
		}
	}
}

// world is a store with a busybox image, product keys and a launcher.
type world struct {
	root, run, keys string
	s               *store.Store
	l               *container.Launcher
	dir             string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running services needs root (CI runs as root)")
	}
	for _, tool := range []string{"runc", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it)", tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static is not installed (make deps installs it)")
	}
	w := &world{root: t.TempDir(), run: t.TempDir(), keys: filepath.Join(t.TempDir(), "keys")}
	var err error
	if w.s, err = store.Open(w.root); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	for _, d := range []string{"bin", "etc", "data"} {
		os.MkdirAll(filepath.Join(base, d), 0o755)
	}
	b, _ := os.ReadFile("/bin/busybox")
	os.WriteFile(filepath.Join(base, "bin/busybox"), b, 0o755)
	for _, l := range []string{"sh", "cat", "ls", "echo", "sleep", "wc", "true"} {
		os.Symlink("busybox", filepath.Join(base, "bin", l))
	}
	os.WriteFile(filepath.Join(base, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	epoch := int64(1700000000)
	if _, err := image.Create(context.Background(), w.s, "bb:1", []string{base}, image.CreateOptions{Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	rt, _, err := ociruntime.Detect(context.Background(), "", filepath.Join(w.run, "runtime"))
	if err != nil {
		t.Skipf("no working OCI runtime: %v", err)
	}
	w.l = &container.Launcher{Mounts: &mount.Manager{Run: w.run}, Runtime: rt}
	w.dir = filepath.Join(w.run, "supervise")
	if _, err := trust.Init(w.keys, trust.InitOptions{Org: "Test"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { assertClean(t, w) })
	return w
}

// assertClean checks that nothing of w is left mounted or running.
func assertClean(t *testing.T, w *world) {
	t.Helper()
	for _, l := range container.Leftovers(w.run) {
		t.Errorf("left behind: %s", l)
	}
	states, _ := w.l.Runtime.List(context.Background())
	if len(states) != 0 {
		t.Errorf("containers left: %+v", states)
	}
	for _, l := range mount.WaitLoopsGone(w.root, 2*time.Second) {
		t.Errorf("loop device left behind: %s", l)
	}
}

// verified signs a manifest for services and verifies it.
func (w *world) verified(t *testing.T, version int64, services ...manifest.Service) *trust.VerifiedManifest {
	t.Helper()
	name := fmt.Sprintf("p%d", version)
	pr, err := trust.Product(w.keys, trust.ProductOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := w.s.Resolve("bb:1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range services {
		services[i].Image = manifest.Image{Ref: "bb:1", MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
		if services[i].Restart == "" {
			services[i].Restart = manifest.RestartAlways
		}
		if services[i].Network == "" {
			services[i].Network = manifest.NetworkNone
		}
	}
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pr.ProductID, Version: version, Services: services}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, err := trust.LoadKey(pr.Key)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := trust.LoadCerts(pr.Cert)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := trust.Sign(b, key, certs)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := trust.LoadCerts(filepath.Join(w.keys, "manifest-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := trust.Verify(signed, trust.Options{CAs: cas, Images: w.s})
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func (w *world) supervisor() *Supervisor {
	return &Supervisor{Dir: w.dir, Launcher: w.l, Store: w.s, Volumes: filepath.Join(w.root, "volumes"),
		StopTimeout: 2 * time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
}

// waitFor polls cond until it holds or fails the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func status(t *testing.T, dir, name string) Status {
	sts, _ := Services(dir)
	for _, s := range sts {
		if s.Name == name {
			return s
		}
	}
	return Status{}
}

func TestUpRestartsWithFreshRootfsAndKeepsVolumes(t *testing.T) {
	w := newWorld(t)
	// Each run: report whether the previous run's scratch file is visible
	// (it must not be), count runs in the volume, then fail.
	script := `if [ -e /scratch ]; then echo LEAKED; fi; echo x > /scratch; echo run >> /data/runs; echo runs=$(wc -l < /data/runs); exit 3`
	vm := w.verified(t, 1,
		manifest.Service{Name: "counter", Command: []string{"/bin/sh", "-c", script}, Restart: manifest.RestartOnFailure,
			Volumes: []manifest.Volume{{Name: "state", Path: "/data"}}},
		manifest.Service{Name: "idle", Command: []string{"/bin/sh", "-c", "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.1; done"}},
		manifest.Service{Name: "once", Command: []string{"/bin/true"}, Restart: manifest.RestartNever},
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.supervisor().Up(ctx, vm) }()
	waitFor(t, "three restarts of counter", func() bool { return status(t, w.dir, "counter").Restarts >= 3 })
	waitFor(t, "once to exit", func() bool { return status(t, w.dir, "once").State == StateExited })
	waitFor(t, "idle to run", func() bool { return status(t, w.dir, "idle").State == StateRunning })

	info, err := Running(w.dir)
	if err != nil || info.Owner.Pid != os.Getpid() || len(info.Services) != 3 {
		t.Errorf("Running: %+v %v", info, err)
	}
	if st := status(t, w.dir, "once"); st.Restarts != 0 || st.ExitCode == nil || *st.ExitCode != 0 {
		t.Errorf("restart: never: %+v", st)
	}
	// A second supervisor on the same directory is refused.
	if err := w.supervisor().Up(context.Background(), vm); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Up: %v", err)
	}
	// restart of a running service: graceful (the trap runs), counted.
	if err := Restart(w.dir, "idle"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "idle restarted", func() bool {
		st := status(t, w.dir, "idle")
		return st.Restarts == 1 && st.State == StateRunning
	})
	if err := Restart(w.dir, "nosuch"); err == nil || !strings.Contains(err.Error(), "no service") {
		t.Errorf("restart of an unknown service: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	logs, _ := os.ReadFile(LogFile(w.dir, "counter"))
	if strings.Contains(string(logs), "LEAKED") {
		t.Errorf("a restarted service saw the previous run's root filesystem:\n%s", logs)
	}
	for i := 1; i <= 3; i++ {
		if !strings.Contains(string(logs), fmt.Sprintf("runs=%d\n", i)) {
			t.Errorf("volume did not keep run %d:\n%s", i, logs)
		}
	}
	if !strings.Contains(string(logs), "exited with code 3") {
		t.Errorf("exit code not logged:\n%s", logs)
	}
	idle, _ := os.ReadFile(LogFile(w.dir, "idle"))
	if strings.Count(string(idle), "got TERM") != 2 {
		t.Errorf("idle must have been stopped with SIGTERM twice (restart, down):\n%s", idle)
	}
	if _, err := Running(w.dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("after Up returned: %v", err)
	}
}

func TestStopEscalatesToKill(t *testing.T) {
	w := newWorld(t)
	// As PID 1 without a handler, sh ignores SIGTERM: only SIGKILL stops it.
	vm := w.verified(t, 1, manifest.Service{Name: "stubborn", Command: []string{"/bin/sh", "-c", "while true; do sleep 0.1; done"}})
	sup := w.supervisor()
	sup.StopTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Up(ctx, vm) }()
	waitFor(t, "stubborn to run", func() bool { return status(t, w.dir, "stubborn").State == StateRunning })
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := status(t, w.dir, "stubborn")
	if st.ExitCode == nil || *st.ExitCode != 128+int(syscall.SIGKILL) || st.Error != "" {
		t.Errorf("killed service: %+v, want exit code 137 and no error", st)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("stopped after %s, before the stop timeout", d)
	}
}

func TestRecoverAfterCrashedSupervisor(t *testing.T) {
	w := newWorld(t)
	vm := w.verified(t, 1, manifest.Service{Name: "sleeper", Command: []string{"/bin/sleep", "1000"}})
	// Simulate a crash: run a container and its mount with a dead owner,
	// then leave the runtime state and mount behind.
	img, err := mount.SystemImage(w.s, vm, vm.Images()[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := Config(vm.Manifest().Services[0], img.Config().Config)
	rootfs := filepath.Join(container.Dir(w.run, "svc-sleeper"), "rootfs")
	dead := exec.Command("true")
	dead.Run()
	if _, err := w.l.Mounts.Mount(context.Background(), img, "svc-sleeper", rootfs, mount.Owner{Pid: dead.Process.Pid, StartTime: 1}, mount.Options{Writable: true}); err != nil {
		t.Fatal(err)
	}
	cfg.ID, cfg.Rootfs = "svc-sleeper", rootfs
	spec, err := ociruntime.Spec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociruntime.WriteBundle(container.Dir(w.run, "svc-sleeper"), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := w.l.Runtime.Start(context.Background(), container.Dir(w.run, "svc-sleeper"), "svc-sleeper", ociruntime.Stdio{}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(w.dir, 0o755)
	writeJSON(supervisorFile(w.dir), Info{Owner: proc.ID{Pid: dead.Process.Pid, StartTime: 1}})
	if _, err := Running(w.dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("a dead supervisor's record: %v, want ErrNotRunning", err)
	}
	// Down with no live supervisor cleans up.
	cleaned, err := Down(context.Background(), w.dir, w.l, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(cleaned, "; ")
	for _, want := range []string{"container svc-sleeper", "mount svc-sleeper", "stale supervisor.json"} {
		if !strings.Contains(joined, want) {
			t.Errorf("clean-up %q does not mention %q", joined, want)
		}
	}
}

// A `vessel run` killed with SIGKILL leaves its container running on a
// mount whose owner is dead: recovery must stop that container before the
// mount is undone under it, and leave no runtime state.
func TestRecoverOrphanedRunContainer(t *testing.T) {
	w := newWorld(t)
	vm := w.verified(t, 1, manifest.Service{Name: "sleeper", Command: []string{"/bin/sleep", "1000"}})
	img, err := mount.SystemImage(w.s, vm, vm.Images()[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := Config(vm.Manifest().Services[0], img.Config().Config)
	const id = "run-orphan"
	rootfs := filepath.Join(container.Dir(w.run, id), "rootfs")
	dead := exec.Command("true")
	dead.Run()
	if _, err := w.l.Mounts.Mount(context.Background(), img, id, rootfs, mount.Owner{Pid: dead.Process.Pid, StartTime: 1}, mount.Options{Writable: true}); err != nil {
		t.Fatal(err)
	}
	cfg.ID, cfg.Rootfs = id, rootfs
	spec, err := ociruntime.Spec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociruntime.WriteBundle(container.Dir(w.run, id), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := w.l.Runtime.Start(context.Background(), container.Dir(w.run, id), id, ociruntime.Stdio{}); err != nil {
		t.Fatal(err)
	}
	cleaned, err := Down(context.Background(), w.dir, w.l, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if joined := strings.Join(cleaned, "; "); !strings.Contains(joined, "container "+id) || !strings.Contains(joined, "mount "+id) {
		t.Errorf("clean-up %q: want the orphaned container and its mount removed", joined)
	}
	states, _ := w.l.Runtime.List(context.Background())
	for _, st := range states {
		if st.ID == id {
			t.Errorf("container %s left behind (%s)", id, st.Status)
			w.l.Runtime.Delete(context.Background(), id, true)
		}
	}
}

// A system manifest is for one architecture: an image that declares
// another is refused before anything is mounted, naming both.
func TestForeignArchitectureRefused(t *testing.T) {
	w := newWorld(t)
	other := "arm64"
	if platform.Host().Architecture == "arm64" {
		other = "amd64"
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	epoch := int64(1700000000)
	// Re-tag bb:1 as an image for the other architecture; w.verified pins bb:1.
	if _, err := image.Create(context.Background(), w.s, "bb:1", []string{dir}, image.CreateOptions{
		Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch,
		Platform: ocispec.Platform{OS: "linux", Architecture: other},
	}); err != nil {
		t.Fatal(err)
	}
	vm := w.verified(t, 1, manifest.Service{Name: "foreign", Command: []string{"/bin/true"}})
	_, err := mount.SystemImage(w.s, vm, vm.Images()[0].Digest)
	if !errors.Is(err, store.ErrWrongPlatform) || !strings.Contains(err.Error(), "it is for linux/"+other) {
		t.Fatalf("SystemImage of a %s image = %v, want ErrWrongPlatform naming linux/%s", other, err, other)
	}
}
