package initrd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/anatol/devmapper.go"

	"github.com/vesselos/vessel/internal/luks2"
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
	if errors.Is(err, unix.EBUSY) && m.Flags&msRemount == 0 {
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

// openLUKS unlocks a LUKS2 volume (keyslot 0) and sets up its dm-crypt
// device. The volume key goes to the kernel's keyring as a logon key
// (which no process can read back) and the table names it
// (":64:logon:vessel:NAME"), so the table that root can list holds no key;
// the key is invalidated once dm-crypt has its copy. There is no udev: the
// device is found as /dev/dm-N through sysfs.
func (linuxSystem) openLUKS(dev string, passphrase []byte, name string) (string, error) {
	vk, seg, err := luks2.VolumeKey(dev, passphrase)
	if err != nil {
		return "", err
	}
	defer clear(vk)
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	size, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKGETSIZE64)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("size of %s: %w", dev, err)
	}
	if int64(size) <= seg.Offset {
		return "", fmt.Errorf("%s (%d bytes) ends before its LUKS2 data segment (%d)", dev, size, seg.Offset)
	}
	// The key is looked up in the keyrings of the thread that loads the
	// table: add it to this thread's keyring and load from this thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	desc := "vessel:" + name
	id, err := unix.AddKey("logon", desc, vk, unix.KEY_SPEC_THREAD_KEYRING)
	if err != nil {
		return "", fmt.Errorf("add the volume key to the kernel keyring: %w", err)
	}
	defer unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0)
	table := devmapper.CryptTable{
		Length: uint64(int64(size) - seg.Offset), BackendDevice: dev, BackendOffset: uint64(seg.Offset),
		Encryption: seg.Encryption, KeyID: fmt.Sprintf(":%d:logon:%s", len(vk), desc), IVTweak: seg.IVTweak,
		SectorSize: uint64(seg.SectorSize),
	}
	if err := devmapper.CreateAndLoad(name, "CRYPT-LUKS2-vessel-"+name, 0, table); err != nil {
		return "", fmt.Errorf("dm-crypt: %w", err)
	}
	names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, n := range names {
		if b, err := os.ReadFile(n); err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(n))), nil
		}
	}
	return "", fmt.Errorf("dm-crypt device %s set up but not found in /sys/block", name)
}
