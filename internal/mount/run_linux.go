package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	if holdsState(dir) {
		return false, nil // live state is recorded on the disk: keep using it
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount a tmpfs on the run directory %s: %w", dir, err)
	}
	return true, nil
}

// mountScratch makes sure dir, the directory of fresh (throwaway) upper
// layers, is on a tmpfs. When the run directory is on a disk, it mounts
// one there for as long as a fresh upper exists (releaseScratch takes it
// down with the last): an overlay mount with its upper on ext4 costs about
// 8 ms (the filesystem's feature checks write xattrs through the journal)
// and creating and removing the upper 5 ms more, against 0.3 ms on tmpfs.
// The writable layer of a container is then in memory, as it is with the
// default run directory /run/vessel (a tmpfs, see PrepareRun). Only root
// outside a user namespace mounts one; a rootless vessel's upper directory
// is a tmpfs of its namespace already (PrivateDirs). The caller holds the
// Manager's lock.
func mountScratch(dir string) error {
	if os.Geteuid() != 0 || inUserNS() {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if isTmpfs(dir) {
		return nil
	}
	if err := unix.Mount("vessel-uppers", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return fmt.Errorf("mount a tmpfs for fresh upper layers on %s: %w", dir, err)
	}
	return nil
}

// releaseScratch unmounts the tmpfs of mountScratch once no upper is left
// in it. The caller holds the Manager's lock.
func releaseScratch(dir string) error {
	if os.Geteuid() != 0 || inUserNS() || !isMountPoint(dir) || !isTmpfs(dir) {
		return nil
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		return err
	}
	// Detached at once: the overlay that used it may hold it a moment
	// longer (until the container's mount namespace is gone), and a plain
	// unmount would wait for that in unmount's EBUSY retries. Nothing of
	// vessel's is left in it.
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount the tmpfs of fresh upper layers %s: %w", dir, err)
	}
	return nil
}

// holdsState reports whether the run directory holds a state record of
// anyone (a mount record, a container's owner record, the supervisor's
// record or socket): whatever package wrote it, a *.json file or a socket.
// Caches that are cheap to lose (the verification cache, runtime probe
// verdicts) and logs do not count. mount knows no other package's layout.
func holdsState(dir string) bool {
	found := false
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || found {
			return filepath.SkipAll
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel == filepath.Base(verifiedDir(dir)) || d.Name() == "logs" {
				return filepath.SkipDir
			}
			return nil
		}
		cache := filepath.Dir(rel) == "runtime" && strings.HasPrefix(d.Name(), "probe-")
		if !cache && (strings.HasSuffix(d.Name(), ".json") || d.Type()&os.ModeSocket != 0) {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}
