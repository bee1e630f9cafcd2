package initrd

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fdWatchdog is a watchdog device by its file descriptor, through the
// WDIOC_* ioctls of linux/watchdog.h.
type fdWatchdog int

func (f fdWatchdog) Fd() int { return int(f) }

func (f fdWatchdog) SetTimeout(seconds int) error {
	// WDIOC_SETTIMEOUT is _IOWR: the driver writes back what it took,
	// read separately with WDIOC_GETTIMEOUT.
	return unix.IoctlSetPointerInt(int(f), unix.WDIOC_SETTIMEOUT, seconds)
}

func (f fdWatchdog) Timeout() (int, error) { return unix.IoctlGetInt(int(f), unix.WDIOC_GETTIMEOUT) }

func (f fdWatchdog) Identity() (string, error) {
	info, err := unix.IoctlGetWatchdogInfo(int(f))
	if err != nil {
		return "", err
	}
	return unix.ByteSliceToString(info.Identity[:]), nil
}

func (f fdWatchdog) Keepalive() error { return unix.IoctlWatchdogKeepalive(int(f)) }

func (f fdWatchdog) Disarm() error {
	_, werr := unix.Write(int(f), []byte("V"))
	cerr := unix.Close(int(f))
	return errors.Join(werr, cerr)
}

// openWatchdogPath opens a watchdog device node write-only, close-on-exec
// (the initrd clears the flag on it alone just before the exec of the
// host's init). Opening it starts the watchdog with the driver's timeout.
func openWatchdogPath(path string) (fdWatchdog, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	return fdWatchdog(fd), nil
}

func (linuxSystem) openWatchdog() (watchdogDevice, string, error) {
	for _, p := range WatchdogDevices {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		fd, err := openWatchdogPath(p)
		if err != nil {
			return nil, p, fmt.Errorf("open %s: %w", p, err)
		}
		return fd, p, nil
	}
	return nil, "", errNoWatchdog
}

// keepAcrossExec clears close-on-exec on the watchdog's descriptor and
// pings it: the last thing before the exec of the host's init, which gets
// a full timeout to take over.
func keepAcrossExec(fd int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
		return fmt.Errorf("keep the watchdog (fd %d) open across exec: %w", fd, err)
	}
	if err := unix.IoctlWatchdogKeepalive(fd); err != nil {
		return fmt.Errorf("ping the watchdog (fd %d): %w", fd, err)
	}
	return nil
}

// hostWatchdog is the host's init taking over the initrd's watchdog (from
// the environment): close-on-exec again (no child inherits it), the
// variables removed, pinged every timeout/4 for the life of PID 1. It
// returns nil without a hand-over or when it cannot be used (printed).
func hostWatchdog(printf func(string, ...any)) *Watchdog {
	fd, timeout, ok, err := ParseWatchdogEnv(os.Getenv)
	os.Unsetenv(WatchdogFDEnv)
	os.Unsetenv(WatchdogTimeoutEnv)
	if err != nil {
		printf("watchdog: FAILED: %v: a hang will not reset the machine", err)
		return nil
	}
	if !ok {
		return nil
	}
	unix.CloseOnExec(fd)
	w, err := adoptWatchdog(fdWatchdog(fd), timeout)
	if err != nil {
		printf("watchdog: FAILED: %v: a hang will not reset the machine", err)
		return nil
	}
	printf("watchdog: %s from the initrd, %d s: pinged every %v while PID 1 runs", w, w.Timeout, w.every)
	return w
}
