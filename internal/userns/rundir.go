package userns

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// RunDir is the run directory of an unprivileged user:
// $VESSEL_RUN, $XDG_RUNTIME_DIR/vessel, or, when there is no runtime
// directory (as after su or runuser), /tmp/vessel-run-UID, which must be
// a directory of the user's own with mode 0700.
func RunDir(note io.Writer) (string, error) {
	if r := os.Getenv("VESSEL_RUN"); r != "" {
		return r, nil
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		if fi, err := os.Stat(x); err == nil && fi.IsDir() {
			return filepath.Join(x, "vessel"), nil
		}
	}
	d := fmt.Sprintf("/tmp/vessel-run-%d", os.Getuid())
	if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("run directory: %w", err)
	}
	fi, err := os.Lstat(d)
	if err != nil {
		return "", fmt.Errorf("run directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm() != 0o700 {
		return "", fmt.Errorf("run directory %s is not a directory of yours with mode 0700: remove it, or set XDG_RUNTIME_DIR or VESSEL_RUN", d)
	}
	fmt.Fprintf(note, "vessel: note: XDG_RUNTIME_DIR is not set (or missing); keeping run state in %s (set XDG_RUNTIME_DIR or VESSEL_RUN to choose)\n", d)
	return d, nil
}
