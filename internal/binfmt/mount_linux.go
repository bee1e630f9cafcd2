package binfmt

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// mountBinfmt mounts binfmt_misc at dir unless it is mounted there.
func mountBinfmt(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "register")); err == nil {
		return nil
	}
	if err := unix.Mount("binfmt_misc", dir, "binfmt_misc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("mount binfmt_misc on %s: %w (registering emulators needs root)", dir, err)
		}
		return fmt.Errorf("mount binfmt_misc on %s: %w", dir, err)
	}
	return nil
}
