package mount

import (
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
	// A run directory on disk with live mount records is left alone.
	busy := filepath.Join(base, "busy")
	os.MkdirAll(mountsDir(busy), 0o700)
	os.WriteFile(filepath.Join(mountsDir(busy), "x.json"), []byte("{}"), 0o600)
	if m, err := PrepareRun(busy); err != nil || m || isTmpfs(busy) {
		t.Errorf("run dir with records: mounted=%v err=%v", m, err)
	}
}
