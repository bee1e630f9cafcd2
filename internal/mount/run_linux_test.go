package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPrepareRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root (CI runs as root)")
	}
	base := t.TempDir()
	if isTmpfs(base) {
		t.Skip("the test directory is already on tmpfs")
	}
	dir := filepath.Join(base, "run")
	mounted, err := PrepareRun(dir)
	if err != nil || !mounted || !isTmpfs(dir) {
		t.Fatalf("PrepareRun: mounted=%v err=%v tmpfs=%v", mounted, err, isTmpfs(dir))
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if again, err := PrepareRun(dir); err != nil || again {
		t.Errorf("second PrepareRun: mounted=%v err=%v, want a no-op", again, err)
	}
	// A run directory on disk with any state record is left alone: mount
	// records, a container's owner record, a supervisor's record.
	for i, rec := range []string{"mounts/x.json", "containers/c1/owner.json", "supervise/supervisor.json"} {
		busy := filepath.Join(base, fmt.Sprint("busy", i))
		os.MkdirAll(filepath.Dir(filepath.Join(busy, rec)), 0o700)
		os.WriteFile(filepath.Join(busy, rec), []byte("{}"), 0o600)
		if m, err := PrepareRun(busy); err != nil || m || isTmpfs(busy) {
			t.Errorf("run dir with %s: mounted=%v err=%v", rec, m, err)
			unix.Unmount(busy, unix.MNT_DETACH)
		}
	}
	// Caches and logs do not hold it back.
	cached := filepath.Join(base, "cached")
	for _, f := range []string{"verified/abc.json", "runtime/probe-runc.json", "supervise/logs/web.log", "lock"} {
		os.MkdirAll(filepath.Dir(filepath.Join(cached, f)), 0o700)
		os.WriteFile(filepath.Join(cached, f), []byte("{}"), 0o600)
	}
	if m, err := PrepareRun(cached); err != nil || !m {
		t.Errorf("run dir with caches only: mounted=%v err=%v", m, err)
	}
	unix.Unmount(cached, unix.MNT_DETACH)
}
