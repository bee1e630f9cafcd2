package registry

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/store"
)

// smallDisk mounts a 1 MiB tmpfs for a store, or skips where mounting is
// not possible (not root, no tmpfs).
func smallDisk(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// A pull that fails on a full disk removes its partial file, so the store
// is usable again at once (the next, smaller pull works); gc removes
// partial files that no pull holds, and keeps those a pull is writing.
func TestPullOnFullDisk(t *testing.T) {
	disk := smallDisk(t)
	src := openStore(t)
	makeImage(t, src, "big:1", 1, 3<<20)
	makeImage(t, src, "small:1", 2, 100<<10)
	host := inProcess(t, false)
	c := newClient(t, Options{})
	for _, name := range []string{"big", "small"} {
		if _, err := c.Copy(ctx(t), Store(src, name+":1"), Registry(mustRef(t, host+"/acme/"+name+":1"))); err != nil {
			t.Fatal(err)
		}
	}
	dst, err := store.Open(filepath.Join(disk, "store"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Copy(ctx(t), Registry(mustRef(t, host+"/acme/big:1")), Store(dst, "big:1"))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("pull of 3 MiB into 1 MiB: %v, want ENOSPC", err)
	}
	tmp := filepath.Join(dst.Root(), "tmp")
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Fatalf("the failed pull left %d files in %s (%s...)", len(ents), tmp, ents[0].Name())
	}
	if _, err := c.Copy(ctx(t), Registry(mustRef(t, host+"/acme/small:1")), Store(dst, "small:1")); err != nil {
		t.Fatalf("the store is unusable after a pull failed on a full disk: %v", err)
	}

	// gc: an orphaned partial goes, one that a pull holds stays
	stale := filepath.Join(tmp, store.PartialPrefix+"sha256-aaaa")
	busy := filepath.Join(tmp, store.PartialPrefix+"sha256-bbbb")
	for _, p := range []string{stale, busy} {
		if err := os.WriteFile(p, make([]byte, 100<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(busy)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	res, err := dst.GC()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("gc kept the orphaned partial download: %v", err)
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("gc removed a partial download that a pull holds: %v", err)
	}
	if len(res.Temp) != 1 || res.TempBytes != 100<<10 {
		t.Errorf("gc reports temp %v (%d bytes), want the one stale partial", res.Temp, res.TempBytes)
	}
}
