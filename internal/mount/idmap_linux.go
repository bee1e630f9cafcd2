package mount

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Idmapped layers (Linux 5.12+ for the mount API, 6.13+ for overlayfs
// layers given as file descriptors; squashfs, erofs, ext4 and tmpfs allow
// MOUNT_ATTR_IDMAP, overlayfs itself does not): every lower layer is
// cloned as a detached mount (open_tree OPEN_TREE_CLONE), the clone is
// idmapped (mount_setattr MOUNT_ATTR_IDMAP with a user namespace holding
// the maps) and handed to a new overlay as "lowerdir+" by file
// descriptor. Nothing but the overlay itself is attached anywhere, so
// undoing it is unmounting the target, as for any overlay, and a crash
// leaves nothing else behind. The shared layer mounts are untouched.

// usernsFD returns a file descriptor of a new user namespace with the
// maps, held by nothing else. The namespace is made by starting this
// program in it under ptrace, which stops it at its first instruction;
// the process is killed once the namespace is open.
func usernsFD(uids, gids []IDMapping) (*os.File, error) {
	conv := func(m []IDMapping) []syscall.SysProcIDMap {
		var out []syscall.SysProcIDMap
		for _, e := range m {
			out = append(out, syscall.SysProcIDMap{ContainerID: int(e.ContainerID), HostID: int(e.HostID), Size: int(e.Size)})
		}
		return out
	}
	// ptrace ties the child to this thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command("/proc/self/exe")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER, UidMappings: conv(uids), GidMappings: conv(gids),
		GidMappingsEnableSetgroups: true, Ptrace: true, Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("make a user namespace for the id map: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("open the id map's user namespace: %w", err)
	}
	return f, nil
}

// applyIdmappedOverlay makes the overlay mt with every lowerdir an
// idmapped clone of itself.
func applyIdmappedOverlay(mt Mount, ns *os.File) (err error) {
	fs, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("overlay on %s: fsopen: %w", mt.Target, err)
	}
	defer unix.Close(fs)
	var attrs uint64
	// A detached clone lives as long as its descriptor: closing it before
	// the overlay is created would unmount the layer from under it.
	var lowers []int
	defer func() {
		for _, fd := range lowers {
			unix.Close(fd)
		}
	}()
	for _, o := range mt.Options {
		k, v, kv := strings.Cut(o, "=")
		switch {
		case k == "lowerdir" && kv:
			for _, l := range strings.Split(v, ":") {
				fd, err := addIdmappedLower(fs, l, ns)
				if err != nil {
					return fmt.Errorf("overlay on %s: %w", mt.Target, err)
				}
				lowers = append(lowers, fd)
			}
		case kv:
			if err := unix.FsconfigSetString(fs, k, v); err != nil {
				return fmt.Errorf("overlay on %s: option %s: %w", mt.Target, o, err)
			}
		case o == "nosuid":
			attrs |= unix.MOUNT_ATTR_NOSUID
		case o == "nodev":
			attrs |= unix.MOUNT_ATTR_NODEV
		case o == "ro":
			attrs |= unix.MOUNT_ATTR_RDONLY
		default:
			if err := unix.FsconfigSetFlag(fs, o); err != nil {
				return fmt.Errorf("overlay on %s: option %s: %w", mt.Target, o, err)
			}
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return fmt.Errorf("overlay on %s over idmapped layers (needs Linux 6.13+): %w", mt.Target, err)
	}
	mfd, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, int(attrs))
	if err != nil {
		return fmt.Errorf("overlay on %s: fsmount: %w", mt.Target, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, mt.Target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("overlay on %s: move_mount: %w", mt.Target, err)
	}
	return nil
}

func addIdmappedLower(fs int, dir string, ns *os.File) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("clone layer mount %s: %w", dir, err)
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("idmap layer mount %s (the filesystem must allow idmapped mounts): %w", dir, err)
	}
	if err := unix.FsconfigSetFd(fs, "lowerdir+", fd); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("layer %s as lowerdir+: %w", dir, err)
	}
	return fd, nil
}

// usernsFor returns a user namespace holding idm's maps, made once per
// map and kept open for the Manager's life (a supervisor has one map per
// service): making one costs a process start, several milliseconds.
func (m *Manager) usernsFor(idm *IDMap) (*os.File, error) {
	key := fmt.Sprint(idm.UIDs, idm.GIDs)
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok := m.userns[key]; ok {
		return f, nil
	}
	f, err := usernsFD(idm.UIDs, idm.GIDs)
	if err != nil {
		return nil, err
	}
	if m.userns == nil {
		m.userns = map[string]*os.File{}
	}
	m.userns[key] = f
	return f, nil
}
