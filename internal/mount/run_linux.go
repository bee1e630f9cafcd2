package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// PrepareRun makes sure the run directory dir is a tmpfs, as /run is on
// systemd machines: per-boot state then really ends with the boot, and the
// dozen directory operations of every container start cost microseconds
// instead of milliseconds on a journaling disk. If dir is on another
// filesystem and holds no live state (no mount record, no supervisor), a
// tmpfs is mounted on it; otherwise it is left alone. It returns whether it
// mounted one. Only root outside a user namespace can; others get false.
func PrepareRun(dir string) (bool, error) {
	if os.Geteuid() != 0 || inUserNS() {
		return false, nil
	}
	if isTmpfs(dir) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	// Take the run directory's own lock (the one Manager takes) on the disk
	// copy: a vessel mounting or unmounting right now finishes first, and
	// then its records keep the directory on disk.
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return false, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return false, err
	}
	if isTmpfs(dir) {
		return false, nil
	}
	if records, _ := os.ReadDir(mountsDir(dir)); len(records) > 0 {
		return false, nil // live mounts are recorded on the disk: keep using it
	}
	if _, err := os.Stat(filepath.Join(dir, "supervise", "supervisor.json")); !errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount a tmpfs on the run directory %s: %w", dir, err)
	}
	return true, nil
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}
