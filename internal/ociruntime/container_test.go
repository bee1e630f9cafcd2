package ociruntime

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// runOut runs c and returns its exit code and stdout; stderr goes to the
// test log.
func runOut(t *testing.T, r Runtime, c Config) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code, err := r.Run(context.Background(), bundle(t, c), c.ID, Stdio{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("run %q: %v (stderr %q)", c.Args, err, errb.String())
	}
	if errb.Len() > 0 {
		t.Logf("stderr: %s", errb.String())
	}
	return code, out.String()
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func TestRunProcessSettings(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	code, out := runOut(t, r, Config{
		ID: "proc", Rootfs: root, User: "app", Cwd: "/tmp", Hostname: "box", Env: []string{"FOO=bar"},
		Args: sh(`echo "$(id -u) $(id -g) $(id -G) $(pwd) $(hostname) $FOO $HOME $PATH"`),
	})
	want := "1000 1000 1000 2000 /tmp box bar /home/app " + strings.TrimPrefix(DefaultPath, "PATH=") + "\n"
	if code != 0 || out != want {
		t.Errorf("code %d out %q, want %q", code, out, want)
	}
	assertNoState(t, r)
}

// status returns a field of the container's /proc/self/status.
func status(t *testing.T, r Runtime, c Config, field string) string {
	t.Helper()
	c.Args = []string{"/bin/grep", "^" + field + ":", "/proc/self/status"}
	code, out := runOut(t, r, c)
	if code != 0 {
		t.Fatalf("grep %s: exit %d", field, code)
	}
	return strings.TrimSpace(strings.TrimPrefix(out, field+":"))
}

func TestRunCapabilities(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	for _, tc := range []struct {
		name string
		c    Config
		eff  []string // expected CapEff
		bnd  []string // expected CapBnd
	}{
		{"default", Config{}, DefaultCapabilities(), DefaultCapabilities()},
		{"add", Config{CapAdd: []string{"NET_ADMIN"}}, append(DefaultCapabilities(), "CAP_NET_ADMIN"), append(DefaultCapabilities(), "CAP_NET_ADMIN")},
		{"only kill", Config{CapDrop: []string{"all"}, CapAdd: []string{"kill"}}, []string{"CAP_KILL"}, []string{"CAP_KILL"}},
		{"none", Config{Capabilities: []string{}}, nil, nil},
		{"non-root", Config{User: "app"}, nil, DefaultCapabilities()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.ID, tc.c.Rootfs = "caps", root
			for field, want := range map[string][]string{"CapEff": tc.eff, "CapBnd": tc.bnd} {
				m, err := CapabilityMask(want)
				if err != nil {
					t.Fatal(err)
				}
				got, err := strconv.ParseUint(status(t, r, tc.c, field), 16, 64)
				if err != nil || got != m {
					t.Errorf("%s %#x (%v), want %#x", field, got, err, m)
				}
			}
			if nnp := status(t, r, tc.c, "NoNewPrivs"); nnp != "1" {
				t.Errorf("NoNewPrivs %q", nnp)
			}
		})
	}
	assertNoState(t, r)
}

func TestRunReadOnlyRoot(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	if code, _ := runOut(t, r, Config{ID: "ro", Rootfs: root, ReadOnly: true, Args: sh("touch /written")}); code == 0 {
		t.Error("write to read-only root succeeded")
	}
	if code, _ := runOut(t, r, Config{ID: "rw", Rootfs: root, Args: sh("touch /written")}); code != 0 {
		t.Errorf("write to writable root: exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(root, "written")); err != nil {
		t.Error(err)
	}
}

func interfaces(procNetDev string) []string {
	var out []string
	for _, l := range strings.Split(procNetDev, "\n") {
		if name, _, ok := strings.Cut(l, ":"); ok && !strings.Contains(name, "|") {
			out = append(out, strings.TrimSpace(name))
		}
	}
	slices.Sort(out)
	return out
}

func TestRunNetwork(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	_, none := runOut(t, r, Config{ID: "netnone", Rootfs: root, Args: []string{"/bin/cat", "/proc/net/dev"}})
	if got := interfaces(none); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("network none sees %v", got)
	}
	host, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	_, inside := runOut(t, r, Config{ID: "nethost", Rootfs: root, Network: "host", Args: []string{"/bin/cat", "/proc/net/dev"}})
	if got, want := interfaces(inside), interfaces(string(host)); !slices.Equal(got, want) {
		t.Errorf("network host sees %v, host has %v", got, want)
	}
}

func TestRunBindMounts(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	vol, ro := t.TempDir(), t.TempDir()
	write(t, filepath.Join(ro, "conf"), "setting\n")
	code, out := runOut(t, r, Config{ID: "vol", Rootfs: root, ReadOnly: true,
		Mounts: []Bind{{Source: vol, Target: "/data"}, {Source: ro, Target: "/etc/app", ReadOnly: true}},
		Args:   sh("cat /etc/app/conf && echo kept > /data/file && ! touch /etc/app/x 2>/dev/null"),
	})
	if code != 0 || out != "setting\n" {
		t.Errorf("code %d out %q", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "file")); err != nil || string(b) != "kept\n" {
		t.Errorf("volume file %q %v", b, err)
	}
}

// TestRunForwardsSignals sends SIGTERM to this process while Run runs: the
// container's trap sees it.
func TestRunForwardsSignals(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	b := bundle(t, Config{ID: "trap", Rootfs: root, Args: sh(`trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done`)})
	pr, pw := io.Pipe()
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := r.Run(context.Background(), b, "trap", Stdio{Stdout: pw})
		pw.Close()
		done <- result{code, err}
	}()
	buf := make([]byte, 64)
	n, _ := pr.Read(buf)
	if string(buf[:n]) != "ready\n" {
		t.Fatalf("container said %q", buf[:n])
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(pr)
	res := <-done
	if res.err != nil || res.code != 7 || string(rest) != "got TERM\n" {
		t.Errorf("code %d err %v out %q", res.code, res.err, rest)
	}
	assertNoState(t, r)
}

func TestRunContextCancel(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	b := bundle(t, Config{ID: "cancel", Rootfs: root, Args: []string{"/bin/sleep", "60"}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitRunning(t, r, "cancel")
		cancel()
	}()
	start := time.Now()
	code, err := r.Run(ctx, b, "cancel", Stdio{})
	if !errors.Is(err, context.Canceled) || code != 137 {
		t.Errorf("code %d err %v, want 137 and context.Canceled", code, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	assertNoState(t, r)

	// Cancelled before the container even exists.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := r.Run(ctx, b, "cancel", Stdio{}); !errors.Is(err, context.Canceled) {
		t.Errorf("pre-cancelled: %v", err)
	}
	assertNoState(t, r)
}

func TestRunTerminal(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer ptmx.Close()
	b := bundle(t, Config{ID: "tty", Rootfs: root, Terminal: true, Args: sh(
		// runc copies the host tty's size to the container's pty just
		// after the process starts: wait for it.
		`tty; i=0; while s=$(stty size 2>&1); case "$s" in [1-9]*) false;; esac && [ $i -lt 100 ]; do sleep 0.02; i=$((i+1)); done; echo "$s"; echo $TERM; exit 5`)})
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 33, Cols: 77}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&out, ptmx); close(read) }() // ends with EIO once tty is closed
	code, err := r.Run(context.Background(), b, "tty", Stdio{Stdin: tty, Stdout: tty, Stderr: tty})
	tty.Close()
	<-read
	if err != nil || code != 5 {
		t.Fatalf("code %d err %v out %q", code, err, out.String())
	}
	got := strings.ReplaceAll(out.String(), "\r", "")
	if !strings.Contains(got, "/dev/pts/0\n33 77\nxterm\n") {
		t.Errorf("terminal output %q", got)
	}
	assertNoState(t, r)

	// Without a tty on stdin, or detached, the runtime refuses a
	// terminal: a runtime error, and nothing left behind.
	if IsTerminal(nil) || IsTerminal(strings.NewReader("")) {
		t.Error("IsTerminal of a non-file")
	}
	var re *Error
	if _, err := r.Run(context.Background(), b, "tty", Stdio{}); !errors.As(err, &re) {
		t.Errorf("terminal without a tty: %v", err)
	}
	if _, err := r.Start(context.Background(), b, "tty", Stdio{}); !errors.As(err, &re) {
		t.Errorf("detached terminal: %v", err)
	}
	assertNoState(t, r)
}

func TestStartKillListDelete(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	// Be the container's reaper so that it leaves no zombie behind.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	b := bundle(t, Config{ID: "svc", Rootfs: root, Args: sh(`trap 'echo stopping; exit 0' TERM; echo up; while :; do sleep 0.05; done`)})
	ctx := context.Background()
	if _, err := r.Start(ctx, b, "svc", Stdio{Stdout: &bytes.Buffer{}}); err == nil {
		t.Error("Start accepted a non-file stdout")
	}
	assertNoState(t, r)
	pid, err := r.Start(ctx, b, "svc", Stdio{Stdout: logf, Stderr: logf})
	if err != nil {
		t.Fatal(err)
	}
	st := waitRunning(t, r, "svc")
	if st.Pid != pid || st.Bundle != b {
		t.Errorf("listed %+v, started pid %d bundle %s", st, pid, b)
	}
	if _, err := r.Start(ctx, b, "svc", Stdio{}); err == nil {
		t.Error("second Start with the same id succeeded")
	}
	if err := r.Kill(ctx, "svc", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if ws.ExitStatus() != 0 {
		t.Errorf("service exit %v", ws)
	}
	l, err := r.List(ctx)
	if err != nil || len(l) != 1 || l[0].Status != "stopped" {
		t.Errorf("after stop: %+v %v", l, err)
	}
	if err := r.Delete(ctx, "svc", false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(logf.Name()); string(b) != "up\nstopping\n" {
		t.Errorf("service log %q", b)
	}
	if err := r.Delete(ctx, "svc", false); !errors.Is(err, ErrNotExist) {
		t.Errorf("delete of a deleted container: %v", err)
	}
	if err := r.Delete(ctx, "svc", true); err != nil {
		t.Errorf("forced delete of a deleted container: %v", err)
	}
	if err := r.Kill(ctx, "ghost", syscall.SIGTERM); !errors.Is(err, ErrNotExist) {
		t.Errorf("kill of an unknown container: %v", err)
	}
	assertNoState(t, r)
}

func TestRunCyclesLeaveNothing(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	b := bundle(t, Config{ID: "cycle", Rootfs: root, Args: []string{"/bin/true"}})
	before := children(t)
	for i := 0; i < 50; i++ {
		if code, err := r.Run(context.Background(), b, "cycle", Stdio{}); err != nil || code != 0 {
			t.Fatalf("cycle %d: code %d err %v", i, code, err)
		}
	}
	assertNoState(t, r)
	if after := children(t); after != before {
		t.Errorf("%d child processes before, %d after", before, after)
	}
	ents, _ := os.ReadDir(b)
	if len(ents) != 1 {
		t.Errorf("bundle dir holds %d entries", len(ents))
	}
}

// children counts this process's children (zombies included).
func children(t *testing.T) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	me := "PPid:\t" + strconv.Itoa(os.Getpid()) + "\n"
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/status"); err == nil && strings.Contains(string(b), me) {
			n++
		}
	}
	return n
}
