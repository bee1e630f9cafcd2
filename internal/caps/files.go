package caps

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/manifest"
)

// VesselBinary is the binary this command runs as (argv[0] on PATH, so a
// test binary standing in for vessel is found as itself), for the learning
// runs' vessel run.
func VesselBinary() (string, error) {
	if p, err := exec.LookPath(os.Args[0]); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs, nil
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the vessel binary: %w", err)
	}
	return exe, nil
}

// WriteServiceCaps sets a service's capabilities: in system.yaml. An empty
// set is written as capabilities: [] (none).
func WriteServiceCaps(path string, src []byte, svc string, names []string) error {
	short := make([]string, len(names))
	for i, n := range names {
		short[i] = Short(n)
	}
	out, err := manifest.SetCapabilities(src, svc, short)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, out, fi.Mode().Perm())
}
