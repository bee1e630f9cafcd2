package initrd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// kernelLog reads what /dev/kmsg holds now (without waiting for more).
func (linuxSystem) kernelLog() string {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	var b strings.Builder
	buf := make([]byte, 8192)
	for i := 0; i < 100000; i++ {
		n, err := unix.Read(int(f.Fd()), buf)
		if errors.Is(err, unix.EPIPE) {
			continue // overwritten records: go on with the next
		}
		if err != nil || n <= 0 {
			break
		}
		rec := string(buf[:n])
		if _, msg, ok := strings.Cut(rec, ";"); ok {
			rec = msg
		}
		b.WriteString(rec)
	}
	return b.String()
}

// switchRoot moves the mounts into the new root, deletes the initrd's
// files (the rootfs is freed only this way), makes the new root / and
// executes its init as PID 1.
func (linuxSystem) switchRoot(p SwitchRoot) error {
	for _, m := range p.Moves {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
		if err := unix.Mount(m.Source, m.Target, "", m.Flags, ""); err != nil {
			return fmt.Errorf("move %s to %s: %w", m.Source, m.Target, err)
		}
	}
	if _, err := os.Stat(filepath.Join(p.NewRoot, p.Init)); err != nil {
		return fmt.Errorf("the host image has no %s: %w", p.Init, err)
	}
	if err := unix.Chdir(p.NewRoot); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat("/", &st); err != nil {
		return err
	}
	removeTree("/", st.Dev, p.NewRoot)
	if err := unix.Mount(".", "/", "", msMove, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", p.NewRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if p.Watchdog != 0 {
		if err := keepAcrossExec(p.Watchdog); err != nil {
			return err
		}
	}
	return unix.Exec(p.Init, p.Argv, p.Env)
}

// removeTree deletes what is under dir on the device dev (the initrd's
// rootfs), not crossing into other mounts and leaving keep alone.
// Errors are ignored: a leftover file only costs memory.
func removeTree(dir string, dev uint64, keep string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if p == keep {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			removeTree(p, dev, keep)
			unix.Rmdir(p)
			continue
		}
		unix.Unlink(p)
	}
}
