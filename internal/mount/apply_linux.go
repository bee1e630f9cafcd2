package mount

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DetectMode picks how layers are mounted on this machine: dm-verity when
// the kernel has device-mapper (device-mapper ioctls, no dmsetup needed), squashfuse inside
// a user namespace (where the kernel refuses squashfs and erofs mounts),
// userspace verification otherwise.
func DetectMode() (Mode, error) {
	if inUserNS() {
		if _, err := exec.LookPath("squashfuse"); err != nil {
			return "", errors.New("mounting layers inside a user namespace needs squashfuse (apt-get install squashfuse)")
		}
		return ModeFuse, nil
	}
	if dmAvailable() {
		return ModeVerity, nil
	}
	return ModeUserspace, nil
}

func inUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
}

// mountLayer verifies (when the mode asks for it), attaches and mounts one
// layer. The blob is opened once: verification, the loop device and the
// verification cache key all use that one open file.
func (m *Manager) mountLayer(lm LayerMount) error {
	f, err := openBlob(lm.Blob)
	if err != nil {
		return err
	}
	defer f.Close()
	if lm.VerifyInUserspace {
		// Nobody but this user may be able to change the blob after it
		// is verified (the kernel will not check it again).
		if err := checkBlobFile(f); err != nil {
			return err
		}
		if err := m.verifyLayer(f, lm); err != nil {
			return err
		}
	}
	// Recorded before the mount: a crash in between leaves a record of an
	// unmounted layer, which the next mount overwrites.
	if err := m.writeLayerRecord(f, lm); err != nil {
		return fmt.Errorf("record the layer mount: %w", err)
	}
	if strings.HasPrefix(lm.Mount.Type, "fuse.") {
		return mountFuse(lm, f)
	}
	loop, err := attachLoop(f, lm.Loop.SizeLimit)
	if err != nil {
		return err
	}
	defer loop.Close() // the mount (or dm device) keeps the device; autoclear frees it after
	dev := loop.Name()
	if lm.Verity != nil {
		if dev, err = createVerity(lm.Verity, dev); err != nil {
			return err
		}
	}
	if err := applyMount(lm.Mount, dev); err != nil {
		if lm.Verity != nil {
			if rerr := removeVerity(lm.Verity.Name); rerr != nil {
				return fmt.Errorf("%w (and removing its verity device: %v)", err, rerr)
			}
		}
		return err
	}
	return nil
}

// attachLoop attaches f read-only to a free loop device, limited to the
// first sizeLimit bytes, with autoclear: the device goes away when the
// last user (the mount) lets go of it.
func attachLoop(f *os.File, sizeLimit int64) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop devices: %w", err)
	}
	defer ctl.Close()
	for attempt := 0; attempt < 64; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		name := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(name, os.O_RDONLY|syscall.O_CLOEXEC, 0)
		if errors.Is(err, os.ErrNotExist) {
			if err = unix.Mknod(name, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err == nil || errors.Is(err, os.ErrExist) {
				lf, err = os.OpenFile(name, os.O_RDONLY|syscall.O_CLOEXEC, 0)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		cfg := unix.LoopConfig{
			Fd: uint32(f.Fd()),
			Info: unix.LoopInfo64{
				Sizelimit: uint64(sizeLimit),
				Flags:     unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR,
			},
		}
		copy(cfg.Info.File_name[:], f.Name())
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == nil {
			return lf, nil
		}
		lf.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("attach %s to %s: %w", f.Name(), name, err)
		}
		// Another process took this device between GET_FREE and
		// CONFIGURE; ask again.
	}
	return nil, errors.New("attach loop device: every free device was taken by another process; try again")
}

// applyMount performs one Mount; dev replaces a device placeholder.
func applyMount(mt Mount, dev string) error {
	src := mt.Source
	if src == LoopDevice || src == VerityDevice {
		src = dev
	}
	var flags uintptr
	var data []string
	for _, o := range mt.Options {
		switch o {
		case "ro":
			flags |= unix.MS_RDONLY
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "nodev":
			flags |= unix.MS_NODEV
		case "bind":
			flags |= unix.MS_BIND
		default:
			data = append(data, o)
		}
	}
	bind := flags&unix.MS_BIND != 0
	first := flags
	if bind {
		// A bind mount takes these flags only on a remount.
		first &^= unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV
	}
	if err := unix.Mount(src, mt.Target, mt.Type, first, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount %s %s on %s (%s): %w", mt.Type, src, mt.Target, strings.Join(mt.Options, ","), err)
	}
	if rest := flags &^ first; bind && rest != 0 {
		if err := unix.Mount("", mt.Target, "", unix.MS_BIND|unix.MS_REMOUNT|rest, ""); err != nil {
			unix.Unmount(mt.Target, 0)
			return fmt.Errorf("remount %s (%s): %w", mt.Target, strings.Join(mt.Options, ","), err)
		}
	}
	return nil
}

// unmount unmounts target, retrying briefly while it is busy (a process
// of a container that just exited may still hold it for a moment). If it
// stays busy, the mount is detached lazily: it leaves the namespace now and
// the kernel frees it (and, through autoclear, its loop device) when the
// last user lets go.
func unmount(target string) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(target, 0); err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	if derr := unix.Unmount(target, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("%w (and detaching: %v)", err, derr)
	}
	return nil
}

// isMountPoint reports whether path is the root of a mount.
func isMountPoint(path string) bool {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, 0, &st); err != nil {
		return false
	}
	return st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// LoopDevices lists the loop devices whose backing file is under prefix,
// as "loopN -> FILE". The kernel detaches an autoclear device shortly
// after its last user lets go, not at once: a caller checking for
// leftovers should poll for a moment (see WaitLoopsGone).
func LoopDevices(prefix string) []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if name := strings.TrimSpace(string(b)); err == nil && strings.HasPrefix(name, prefix) {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(f)))+" -> "+name)
		}
	}
	return out
}

// WaitLoopsGone waits up to timeout for LoopDevices(prefix) to be empty and
// returns what is left.
func WaitLoopsGone(prefix string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		left := LoopDevices(prefix)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}
