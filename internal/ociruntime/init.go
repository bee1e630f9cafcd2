package ociruntime

import (
	"debug/elf"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
)

// InitPath is where WithInit mounts the init inside the container.
const InitPath = "/run/vessel-init"

// initNames are the tiny inits WithInit looks for, in podman's order of
// preference: each reaps zombies and forwards signals to its child, and
// takes the command after "--".
var initNames = []string{"catatonit", "tini", "dumb-init"}

// ErrNoInit is wrapped when no usable init binary is found.
var ErrNoInit = errors.New("no init for the container")

// FindInit returns path, or the first of catatonit, tini and dumb-init on
// PATH. The binary must be statically linked: it runs inside the
// container, whose root has none of the host's libraries.
func FindInit(path string) (string, error) {
	if path == "" {
		for _, n := range initNames {
			if p, err := exec.LookPath(n); err == nil {
				path = p
				break
			}
		}
		if path == "" {
			return "", fmt.Errorf("%w: none of %v is installed (Debian: apt-get install catatonit)", ErrNoInit, initNames)
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	f, err := elf.Open(abs)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrNoInit, abs, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%w: %s is dynamically linked, so it cannot run inside the container (use a static build such as Debian's catatonit)", ErrNoInit, abs)
		}
	}
	return abs, nil
}

// WithInit makes the static init at path the container's PID 1: it is
// bind-mounted read-only at InitPath and runs c.Args as its child, so a
// shell or a server without signal handlers stops on SIGTERM and zombies
// are reaped (podman run --init).
func WithInit(c *Config, path string) {
	c.Mounts = append(c.Mounts, Bind{Source: path, Target: InitPath, ReadOnly: true})
	c.Args = append([]string{InitPath, "--"}, c.Args...)
}
