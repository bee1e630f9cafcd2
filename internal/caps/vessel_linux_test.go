package caps

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// The known-answer workloads run as containers through a vessel binary
// built from this tree, on a busybox image made in the test.

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// env is a store and run directory with the busybox image bb:1, and the
// vessel binary.
type env struct {
	vessel string
	vars   []string
}

func (e env) cmd(args ...string) *exec.Cmd {
	c := exec.Command(e.vessel, args...)
	c.Env = append(os.Environ(), e.vars...)
	return c
}

func newEnv(t *testing.T) env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("learning capabilities runs containers and BPF: needs root (CI runs as root)")
	}
	for _, tool := range []string{"runc", "mksquashfs", "busybox", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it)", tool)
		}
	}
	if err := CanTrace(); err != nil {
		t.Skipf("BPF tracing is not permitted or the tracepoint is missing here: %v", err)
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "vessel-caps-bin-")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "vessel")
		out, err := exec.Command("go", "build", "-o", builtBin, "github.com/vesselos/vessel/cmd/vessel").CombinedOutput()
		if err != nil {
			buildErr = &buildError{out}
		}
	})
	if buildErr != nil {
		t.Fatalf("build vessel: %v", buildErr)
	}
	dir := t.TempDir()
	e := env{vessel: builtBin, vars: []string{"VESSEL_ROOT=" + dir + "/store", "VESSEL_RUN=" + dir + "/run"}}
	// vessel run keeps layer mounts (and the uppers tmpfs) warm for a
	// minute; vessel down takes them down before the directory goes.
	t.Cleanup(func() {
		if out, err := e.cmd("down").CombinedOutput(); err != nil {
			t.Errorf("vessel down: %v\n%s", err, out)
		}
	})
	base := filepath.Join(dir, "base")
	os.MkdirAll(filepath.Join(base, "bin"), 0o755)
	os.MkdirAll(filepath.Join(base, "etc"), 0o755)
	bb, err := os.ReadFile(mustLook(t, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(base, "bin/busybox"), bb, 0o755)
	for _, l := range []string{"sh", "chown", "nc", "ping", "adjtimex", "sed", "sleep", "echo", "true"} {
		os.Symlink("busybox", filepath.Join(base, "bin", l))
	}
	os.WriteFile(filepath.Join(base, "etc/motd"), []byte("hello\n"), 0o644)
	if out, err := e.cmd("image", "create", "bb:1", "--layer", base).CombinedOutput(); err != nil {
		t.Fatalf("image create: %v\n%s", err, out)
	}
	return e
}

type buildError struct{ out []byte }

func (b *buildError) Error() string { return string(b.out) }

func mustLook(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// learn runs vessel caps learn --json and decodes the report.
func (e env) learn(t *testing.T, flags ...string) *Report {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := e.cmd(append([]string{"--json", "caps", "learn"}, flags...)...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("vessel caps learn %v: %v\n%s", flags, err, stderr.Bytes())
	}
	var r Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("decode report: %v\n%s", err, stdout.Bytes())
	}
	return &r
}

// clockCmd sets the kernel's tick length to the value it already has: a
// CAP_SYS_TIME check (and, for a static glibc busybox, the clock_adjtime
// syscall vessel's seccomp filter refuses without the capability) that
// changes nothing. `date -s` would take the same gate, but the clock is not
// namespaced: it would set the host's clock.
const clockCmd = `adjtimex -t $(adjtimex | sed -n 's/^-t *tick: *\([0-9]*\).*/\1/p')`

func TestLearnKnownAnswers(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name     string
		duration time.Duration
		args     []string
		want     []string
	}{
		{"chown", 0, []string{"/bin/chown", "1:1", "/etc/motd"}, []string{"CAP_CHOWN"}},
		{"port-80", 2 * time.Second, []string{"/bin/nc", "-l", "-p", "80"}, []string{"CAP_NET_BIND_SERVICE"}},
		{"ping", 0, []string{"/bin/ping", "-c1", "127.0.0.1"}, []string{"CAP_NET_RAW"}},
		{"clock", 0, []string{"/bin/sh", "-c", clockCmd}, []string{"CAP_SYS_TIME"}},
		{"nothing", 0, []string{"/bin/echo", "hello"}, []string{}},
		{"second-phase", 4 * time.Second, []string{"/bin/sh", "-c", "sleep 2; chown 1 /etc/motd || exit 1; sleep 600"}, []string{"CAP_CHOWN"}},
		// The same workload watched for too short a time needs nothing yet.
		{"second-phase-too-short", time.Second, []string{"/bin/sh", "-c", "sleep 2; chown 1 /etc/motd || exit 1; sleep 600"}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flags := []string{}
			if tc.duration > 0 {
				flags = append(flags, "--duration", tc.duration.String())
			}
			rep := e.learn(t, append(append(flags, "bb:1", "--"), tc.args...)...)
			if got := rep.Names(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("learned %v, want %v (checks %+v)", got, tc.want, rep.Checks)
			}
			if rep.Method != MethodTrace {
				t.Errorf("method %q, want %q", rep.Method, MethodTrace)
			}
			// The trace alone is exact for these: probes, runc's set-up and
			// overlayfs copy-up under the mounter's credentials do not count.
			if len(rep.Upper) != len(tc.want) {
				t.Errorf("traced upper bound %v, want %v", rep.Upper, tc.want)
			}
			for _, n := range rep.Caps {
				if len(n.Syscalls) == 0 || n.Without == "" {
					t.Errorf("%s: no syscall or no evidence: %+v", n.Cap, n)
				}
			}
			// The learned set keeps the outcome; every set with one fewer
			// changes it.
			r := &VesselRunner{Vessel: e.vessel, Image: "bb:1", Args: tc.args, Duration: tc.duration}
			r.Global = nil
			for _, v := range e.vars {
				k, val, _ := strings.Cut(v, "=")
				t.Setenv(k, val)
			}
			got, err := r.Run(context.Background(), rep.Names())
			if err != nil {
				t.Fatal(err)
			}
			if !sameEnd(got, rep.Baseline) {
				t.Errorf("with %v: %s, want %s", rep.Names(), got.Outcome(), rep.Baseline.Outcome())
			}
			for _, c := range rep.Names() {
				got, err := r.Run(context.Background(), without(rep.Names(), c))
				if err != nil {
					t.Fatal(err)
				}
				if sameEnd(got, rep.Baseline) {
					t.Errorf("without %s: %s, the same as with it", c, got.Outcome())
				}
			}
		})
	}
}

func TestLearnWithoutTracing(t *testing.T) {
	e := newEnv(t)
	offer := []string{"CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_NET_RAW", "CAP_SYS_TIME"} // number order
	rep := e.learn(t, "--no-trace", "--offer", strings.Join(offer, ","), "bb:1", "--", "/bin/chown", "1:1", "/etc/motd")
	if got := rep.Names(); !reflect.DeepEqual(got, []string{"CAP_CHOWN"}) {
		t.Errorf("learned %v, want [CAP_CHOWN]", got)
	}
	if rep.Method != MethodDropOne || rep.Runs != 1+len(offer) || !reflect.DeepEqual(rep.Upper, offer) {
		t.Errorf("method %q, %d runs, upper %v: want %q, %d runs from every offered capability", rep.Method, rep.Runs, rep.Upper, MethodDropOne, 1+len(offer))
	}
}

func TestExplainAndService(t *testing.T) {
	e := newEnv(t)
	out, err := e.cmd("--json", "caps", "explain", "bb:1", "chown", "--", "/bin/chown", "1:1", "/etc/motd").Output()
	if err != nil {
		t.Fatal(err)
	}
	var ex struct {
		Checks []Check
	}
	if err := json.Unmarshal(out, &ex); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range ex.Checks {
		if c.Cap != "CAP_CHOWN" {
			t.Errorf("explain CHOWN listed %s", c.Cap)
		}
		if c.Class == Granted && strings.Contains(c.Syscall, "chown") && len(c.Path) > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("explain: no granted CAP_CHOWN check in a chown syscall: %s", out)
	}

	// The human report.
	human, err := e.cmd("caps", "learn", "bb:1", "--", "/bin/ping", "-c1", "127.0.0.1").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"method: trace+drop-one; 3 runs", "outcome to keep: exit 0\n",
		"CAP_NET_RAW: open raw and packet sockets", "  used by socket: ", "  without it: exit 1 instead of exit 0\n",
		"run it with: vessel run --cap-drop ALL --cap-add NET_RAW ...\n"} {
		if !strings.Contains(string(human), want) {
			t.Errorf("report lacks %q:\n%s", want, human)
		}
	}

	sys := filepath.Join(t.TempDir(), "system.yaml")
	src := "product: p\nversion: 1\nservices:\n  - name: web # the server\n    image: bb:1\n    command: [/bin/nc, -l, -p, \"80\"]\n    restart: always\n  - name: idle\n    image: bb:1\n    command: [/bin/sleep, \"600\"]\n"
	os.WriteFile(sys, []byte(src), 0o644)
	rep := e.learn(t, "--manifest", sys, "--service", "web", "--duration", "2s", "--write")
	if got := rep.Names(); !reflect.DeepEqual(got, []string{"CAP_NET_BIND_SERVICE"}) {
		t.Errorf("service web learned %v", got)
	}
	b, _ := os.ReadFile(sys)
	want := strings.Replace(src, "    image: bb:1\n", "    image: bb:1\n    capabilities: [NET_BIND_SERVICE]\n", 1)
	if string(b) != want {
		t.Errorf("system.yaml after --write:\n%s\nwant:\n%s", b, want)
	}
	// A service needing nothing gets capabilities: [] (none, said outright).
	rep = e.learn(t, "--manifest", sys, "--service", "idle", "--duration", "1s", "--write")
	if got := rep.Names(); len(got) != 0 {
		t.Errorf("service idle learned %v", got)
	}
	b2, _ := os.ReadFile(sys)
	want = strings.Replace(want, "  - name: idle\n    image: bb:1\n", "  - name: idle\n    image: bb:1\n    capabilities: []\n", 1)
	if string(b2) != want {
		t.Errorf("system.yaml after --write of nothing:\n%s\nwant:\n%s", b2, want)
	}
}

// vessel run --why-denied names what a failed container was refused, and
// says nothing when it succeeds; its cgroups are gone afterwards.
func TestRunWhyDenied(t *testing.T) {
	e := newEnv(t)
	var stderr bytes.Buffer
	c := e.cmd("run", "--why-denied", "--cap-drop", "ALL", "bb:1", "/bin/nc", "-l", "-p", "80")
	c.Stderr = &stderr
	if err := c.Run(); err == nil {
		t.Fatal("nc bound port 80 without CAP_NET_BIND_SERVICE")
	}
	if !strings.Contains(stderr.String(), "vessel: note: the container was refused CAP_NET_BIND_SERVICE (bind by nc, 1x)") ||
		!strings.Contains(stderr.String(), "--cap-add NET_BIND_SERVICE") {
		t.Errorf("no note naming CAP_NET_BIND_SERVICE:\n%s", stderr.String())
	}
	out, err := e.cmd("run", "--why-denied", "--cap-drop", "ALL", "--cap-add", "CHOWN", "bb:1", "/bin/chown", "1", "/etc/motd").CombinedOutput()
	if err != nil || strings.Contains(string(out), "note") {
		t.Errorf("a successful run: %v\n%s", err, out)
	}
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{mnt, "/sys/fs/cgroup/memory"} {
		if left, _ := filepath.Glob(filepath.Join(root, "vessel-watch-*")); len(left) > 0 {
			t.Errorf("cgroups left behind: %v", left)
		}
	}
}

// vessel up --why-denied: a service that fails for lack of a capability
// (no capabilities: declared, so none) has the refused capability named in
// its log with the capabilities: line to add; a service that fails for
// another reason and one that succeeds get no note; no cgroups are left.
func TestUpWhyDenied(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		c := e.cmd(args...)
		c.Dir = dir
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("vessel %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	sys := "product: demo\nversion: 1\nservices:\n" +
		"  - {name: web, image: bb:1, command: [/bin/nc, -l, -p, \"80\"], restart: never, network: host}\n" +
		"  - {name: broken, image: bb:1, command: [/bin/sh, -c, \"exit 3\"], restart: never}\n" +
		"  - {name: fine, image: bb:1, command: [/bin/true], restart: never}\n"
	if err := os.WriteFile(filepath.Join(dir, "system.yaml"), []byte(sys), 0o644); err != nil {
		t.Fatal(err)
	}
	run("keys", "init", "keys", "--org", "Test")
	run("keys", "product", "keys", "--name", "demo")
	run("manifest", "build", "system.yaml", "--keys", "keys", "-o", "m.json")
	run("manifest", "sign", "m.json", "--key", "keys/products/demo/product.key", "--cert", "keys/products/demo/product.pem", "-o", "m.signed")
	run("up", "m.signed", "--ca", "keys/manifest-ca.pem", "--detach", "--why-denied", "--stop-timeout", "2s")
	defer e.cmd("down").Run()

	logs := map[string]string{}
	deadline := time.Now().Add(60 * time.Second)
	for name := range map[string]bool{"web": true, "broken": true, "fine": true} {
		for {
			logs[name] = run("logs", name)
			if strings.Contains(logs[name], "exited with code") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("service %s did not end:\n%s", name, logs[name])
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("web log:\n%s", logs["web"])
	if !strings.Contains(logs["web"], "exited with code 1") ||
		!strings.Contains(logs["web"], "note: the container was refused CAP_NET_BIND_SERVICE (bind by nc, 1x)") ||
		!strings.Contains(logs["web"], "capabilities: [NET_BIND_SERVICE] in system.yaml") {
		t.Errorf("web's log does not name CAP_NET_BIND_SERVICE:\n%s", logs["web"])
	}
	if !strings.Contains(logs["broken"], "exited with code 3") || strings.Contains(logs["broken"], "note:") {
		t.Errorf("broken (no capability refused) got a note or did not fail:\n%s", logs["broken"])
	}
	if !strings.Contains(logs["fine"], "exited with code 0") || strings.Contains(logs["fine"], "note:") {
		t.Errorf("fine got a note:\n%s", logs["fine"])
	}
	run("down")
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{mnt, "/sys/fs/cgroup/memory"} {
		if left, _ := filepath.Glob(filepath.Join(root, "vessel-watch-*")); len(left) > 0 {
			t.Errorf("cgroups left behind: %v", left)
		}
	}
}
