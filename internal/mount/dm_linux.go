package mount

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DMControl is the device-mapper control node (devtmpfs makes it; no udev
// is needed).
const DMControl = "/dev/mapper/control"

// dmIoctl runs one device-mapper ioctl with req (from dmRequest) and
// returns the kernel's reply header.
func dmIoctl(cmd uintptr, req []byte) (dmReply, error) {
	ctl, err := os.OpenFile(DMControl, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return dmReply{}, fmt.Errorf("device-mapper: %w", err)
	}
	defer ctl.Close()
	// The kernel writes its reply into the buffer; give it room for a
	// header even when the request is only a header.
	buf := make([]byte, max(len(req), dmHeaderSize+1024))
	copy(buf, req)
	if len(req) == dmHeaderSize {
		binary.NativeEndian.PutUint32(buf[dmOffDataSize:], uint32(len(buf)))
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), cmd, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return dmReply{}, e
	}
	return parseDMReply(buf)
}

// dmAvailable reports whether this kernel has device-mapper: the control
// node opens and answers DM_VERSION.
func dmAvailable() bool {
	req, _ := dmRequest("version", 0, nil)
	r, err := dmIoctl(unix.DM_VERSION, req)
	return err == nil && r.Version[0] == dmVersion[0]
}

// createVerity opens the read-only dm-verity device v over dev (data and
// hash tree on the same device) and returns its path, /dev/dm-N: there is
// no udev to make /dev/mapper/NAME. On failure nothing is left behind.
func createVerity(v *Verity, dev string) (path string, err error) {
	tg, err := parseDMTable(v.Table(dev))
	if err != nil {
		return "", err
	}
	return dmCreate(v.Name, tg)
}

// dmCreate creates the read-only device name with one target and
// activates it.
func dmCreate(name string, tg dmTarget) (path string, err error) {
	req, err := dmRequest(name, 0, nil)
	if err != nil {
		return "", err
	}
	r, err := dmIoctl(unix.DM_DEV_CREATE, req)
	if err != nil {
		return "", fmt.Errorf("create device-mapper device %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			if rerr := dmRemove(name); rerr != nil {
				err = fmt.Errorf("%w (and removing it: %v)", err, rerr)
			}
		}
	}()
	if req, err = dmRequest(name, dmReadOnlyFlag, []dmTarget{tg}); err != nil {
		return "", err
	}
	if _, err := dmIoctl(unix.DM_TABLE_LOAD, req); err != nil {
		return "", fmt.Errorf("load %s table into device-mapper device %s: %w (is the dm-%s module loaded?)", tg.Type, name, err, tg.Type)
	}
	if req, err = dmRequest(name, 0, nil); err != nil {
		return "", err
	}
	if _, err := dmIoctl(unix.DM_DEV_SUSPEND, req); err != nil {
		return "", fmt.Errorf("activate device-mapper device %s: %w", name, err)
	}
	path = fmt.Sprintf("/dev/dm-%d", r.Minor())
	if err := dmNode(path, r); err != nil {
		return "", err
	}
	return path, nil
}

// dmNode makes sure path is the device node of r: devtmpfs makes it as the
// device is added; without devtmpfs it is made here.
func dmNode(path string, r dmReply) error {
	want := unix.Mkdev(r.Major(), r.Minor())
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != want {
			return fmt.Errorf("%s is not block device %d:%d", path, r.Major(), r.Minor())
		}
		return nil
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(want)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("make device node %s: %w", path, err)
	}
	return nil
}

// dmRemove removes the device-mapper device name. A device that does not
// exist is not an error; a busy one (its filesystem still being released)
// is retried for a moment, as dmsetup remove --retry does.
func dmRemove(name string) error {
	req, err := dmRequest(name, 0, nil)
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		_, err = dmIoctl(unix.DM_DEV_REMOVE, req)
		if err == nil || errors.Is(err, unix.ENXIO) || errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || i == 25 {
			return fmt.Errorf("remove device-mapper device %s: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeVerity removes the verity device of the layer with the given hex
// digest (or device name), if there is one.
func removeVerity(hexOrName string) error {
	name := hexOrName
	if !strings.HasPrefix(name, "vessel-") {
		if len(name) < 32 {
			return nil
		}
		name = "vessel-" + name[:32]
	}
	if !dmAvailable() {
		// No device-mapper here, or none this process may use (a rootless
		// vessel gets EACCES): it cannot have made a device.
		return nil
	}
	return dmRemove(name)
}

// DMTable returns the live table of the device-mapper device name, as
// `dmsetup table` prints it (devices as MAJOR:MINOR).
func DMTable(name string) ([]string, error) {
	req, err := dmRequest(name, dmStatusTableFlag, nil)
	if err != nil {
		return nil, err
	}
	ctl, err := os.OpenFile(DMControl, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("device-mapper: %w", err)
	}
	defer ctl.Close()
	buf := make([]byte, 16<<10)
	copy(buf, req)
	binary.NativeEndian.PutUint32(buf[dmOffDataSize:], uint32(len(buf)))
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.DM_TABLE_STATUS, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return nil, fmt.Errorf("table of device-mapper device %s: %w", name, e)
	}
	return parseDMTargets(buf)
}
