package initrd

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vesselos/vessel/internal/tpm"

	"golang.org/x/sys/unix"
)

// linuxSystem makes the real system calls.
type linuxSystem struct{}

func (linuxSystem) mount(m Mount) error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return err
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EBUSY) {
		return nil // already mounted (the kernel may have mounted it)
	}
	return err
}

// loadModule loads a module with finit_module(2) (syscall 313 on amd64).
// EEXIST (already loaded or built in) is not an error.
func (linuxSystem) loadModule(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	return err == nil, err
}

func (linuxSystem) powerOff() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func (linuxSystem) uptime() (float64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, err
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9, nil
}

// openTPM opens the kernel's TPM resource manager, waiting briefly for the
// driver to create it.
func (linuxSystem) openTPM() (tpmDevice, error) {
	for i := 0; ; i++ {
		if _, err := os.Stat(TPMDevice); err == nil {
			break
		} else if i == 40 {
			return nil, fmt.Errorf("%w: %s did not appear in 2s", errNoTPM, TPMDevice)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t, err := tpm.Open(TPMDevice)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoTPM, err)
	}
	return t, nil
}
