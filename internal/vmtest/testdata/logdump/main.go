// Command logdump is a test initrd's /init: it prints PCR7 as the kernel
// reads it from the TPM and the firmware's TCG event log (base64) on the
// console, then powers off. internal/vmtest's PCR7 test boots it to compare
// the guest's PCR7 and log with an offline prediction.
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"syscall"
)

func main() {
	err := dump()
	if err != nil {
		fmt.Printf("logdump: error %v\n", err)
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

func dump() error {
	for _, m := range []struct{ src, dir, fs string }{
		{"sysfs", "/sys", "sysfs"}, {"securityfs", "/sys/kernel/security", "securityfs"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(m.src, m.dir, m.fs, 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", m.dir, err)
		}
	}
	pcr, err := os.ReadFile("/sys/class/tpm/tpm0/pcr-sha256/7")
	if err != nil {
		return fmt.Errorf("read PCR7: %w", err)
	}
	fmt.Printf("logdump: pcr7 %s\n", strings.ToLower(strings.TrimSpace(string(pcr))))
	log, err := os.ReadFile("/sys/kernel/security/tpm0/binary_bios_measurements")
	if err != nil {
		return fmt.Errorf("read event log: %w", err)
	}
	s := base64.StdEncoding.EncodeToString(log)
	for len(s) > 0 {
		n := min(len(s), 96)
		fmt.Printf("logdump: log %s\n", s[:n])
		s = s[n:]
	}
	fmt.Printf("logdump: end %d %x\n", len(log), sha256.Sum256(log))
	return nil
}
