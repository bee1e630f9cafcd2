package initrd

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/boot/efivar"
)

// firmware opens the UEFI variables and reads BootCurrent, the entry the
// firmware started ("" when unknown, said on the console unless this is
// not a UEFI boot at all).
func (linuxSystem) firmware(printf func(string, ...any)) (*efivar.Store, string) {
	vars, err := efivar.Open()
	if errors.Is(err, efivar.ErrNoFirmware) {
		return nil, ""
	}
	if err != nil {
		printf("UEFI variables: %v", err)
		return nil, ""
	}
	n, ok, err := vars.BootCurrent()
	if err != nil || !ok {
		printf("UEFI variables: no BootCurrent (%v)", err)
		return vars, ""
	}
	return vars, efivar.EntryName(n)
}

func syncFS() { unix.Sync() }

// reboot restarts the machine (a failed trial boot: the next boot runs the
// default slot).
func (linuxSystem) reboot() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
