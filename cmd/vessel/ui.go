package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/reference"
)

// globals are the flags every command shares.
type globals struct {
	root string
	json bool

	runOnce sync.Once
}

// storeRoot resolves the store directory: --root, $VESSEL_ROOT,
// /var/lib/vessel for root, $XDG_DATA_HOME/vessel (or ~/.local/share/vessel).
func (g *globals) storeRoot() (string, error) {
	if g.root != "" {
		return g.root, nil
	}
	if r := os.Getenv("VESSEL_ROOT"); r != "" {
		return r, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/vessel", nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "vessel"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no store directory: set --root or VESSEL_ROOT (%w)", err)
	}
	return filepath.Join(home, ".local", "share", "vessel"), nil
}

// runDir is the per-boot state directory (mounts, containers, services):
// $VESSEL_RUN, /run/vessel for root, $XDG_RUNTIME_DIR/vessel otherwise.
// /run/vessel gets a tmpfs of its own if /run is not one (mount.PrepareRun).
func (g *globals) runDir() string {
	if r := os.Getenv("VESSEL_RUN"); r != "" {
		return r
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" && os.Geteuid() != 0 {
		return filepath.Join(x, "vessel")
	}
	g.runOnce.Do(func() {
		if _, err := mount.PrepareRun(mount.DefaultRun); err != nil {
			fmt.Fprintf(os.Stderr, "vessel: warning: %v; keeping run state on disk\n", err)
		}
	})
	return mount.DefaultRun
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exitError carries a specific exit code (for example a container's) to main.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e exitError) Unwrap() error { return e.err }

// usageError marks errors caused by bad command-line use (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func isUsageError(err error) bool {
	var u usageError
	if errors.As(err, &u) {
		return true
	}
	// an image reference the user typed that breaks the reference grammar
	if errors.Is(err, reference.ErrInvalid) || errors.Is(err, reference.ErrUnsupportedTransport) {
		return true
	}
	// cobra's own argument and flag errors
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.Contains(s, "arg(s), received") ||
		strings.HasPrefix(s, "invalid argument") || strings.HasPrefix(s, "flag needs an argument")
}
