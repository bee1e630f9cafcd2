package caps

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// startTracer makes a fresh cgroup and traces it, or skips the test where
// the facility is truly absent (not root, no cgroup2, no BPF, no
// tracepoint), saying which.
func startTracer(t *testing.T) (*Cgroup, *Tracer) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("tracing capability checks needs root (CI runs as root)")
	}
	cg, err := NewCgroup("vessel-caps-test")
	if err != nil {
		t.Skipf("no cgroup v2 to filter on: %v", err)
	}
	t.Cleanup(func() {
		if err := cg.Remove(); err != nil {
			t.Error(err)
		}
	})
	tr, err := NewTracer(cg.ID, TraceOptions{})
	if errors.Is(err, ErrNoTracer) {
		t.Skipf("BPF tracing is not permitted or the tracepoint is missing here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cg, tr
}

// runIn runs argv as a child placed directly in cg (clone3 CLONE_INTO_CGROUP).
func runIn(t *testing.T, cg *Cgroup, argv ...string) error {
	t.Helper()
	fd, err := syscall.Open(cg.Dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("%v: %s", argv, out)
	}
	return err
}

func TestTracerSeesChown(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox-static is not installed (make deps installs it)")
	}
	cg, tr := startTracer(t)
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o644)
	// A process outside the cgroup: its checks must not appear.
	outside := exec.Command(bb, "chown", "3:3", f)
	if err := outside.Run(); err != nil {
		t.Fatal(err)
	}
	if err := runIn(t, cg, bb, "chown", "1:1", f); err != nil {
		t.Fatal(err)
	}
	trace, err := tr.Stop()
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range trace.Events {
		if ev.PID == outside.Process.Pid {
			t.Errorf("a check of the process outside the cgroup was traced: %+v", ev)
		}
	}
	sym, err := LoadKallsyms()
	if err != nil {
		t.Fatal(err)
	}
	checks := Classify(trace, sym)
	for _, c := range checks {
		t.Logf("%s %s %s %v %s x%d", c.Cap, c.Class, c.Syscall, c.Path, c.Comm, c.Count)
	}
	var chown, probes int
	for _, c := range checks {
		switch {
		case c.Cap == "CAP_CHOWN" && c.Class == Granted:
			chown += c.Count
			if !strings.Contains(c.Syscall, "chown") {
				t.Errorf("CAP_CHOWN checked in syscall %q, want a chown syscall", c.Syscall)
			}
		case c.Class == Probe:
			probes += c.Count
		case c.Class == Granted || c.Class == Denied:
			t.Errorf("unexpected check %+v", c)
		}
	}
	if chown == 0 {
		t.Errorf("saw no granted CAP_CHOWN check")
	}
	if probes == 0 {
		t.Errorf("no no-audit probes seen: the exec and mmaps of busybox ask for CAP_SYS_ADMIN")
	}
	var fi syscall.Stat_t
	syscall.Stat(f, &fi)
	if fi.Uid != 1 {
		t.Errorf("file owner %d, want 1", fi.Uid)
	}
}
