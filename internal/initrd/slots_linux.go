package initrd

import "golang.org/x/sys/unix"

func syncFS() { unix.Sync() }

// reboot restarts the machine (a failed trial boot: the next boot runs the
// default slot).
func (linuxSystem) reboot() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
