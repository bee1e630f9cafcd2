package ociruntime

import (
	"errors"
	"os"
	"path/filepath"
)

// RemoveIncomplete removes the state directories of runc containers whose
// creation was cut short before runc wrote their state: a directory under
// StateRoot with no state.json (runc writes exec.fifo first). runc list
// does not show such a container and runc delete does not know it, so
// nothing else would ever remove it; its process died with the runtime
// (the runtime dies with vessel). Directories for which keep(id) is true
// (a live vessel's container, being created right now) and runtime probes
// are left alone. It returns the ids removed. Only runc's layout is known;
// for other runtimes it does nothing.
func (r Runtime) RemoveIncomplete(keep func(id string) bool) ([]string, error) {
	if r.Name != "runc" || r.StateRoot == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(r.StateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !ValidID(id) || keep(id) || len(id) >= len(ProbePrefix) && id[:len(ProbePrefix)] == ProbePrefix {
			continue
		}
		dir := filepath.Join(r.StateRoot, id)
		if _, err := os.Stat(filepath.Join(dir, "state.json")); !errors.Is(err, os.ErrNotExist) {
			continue // a container runc knows (or cannot tell): runc delete's job
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, id)
	}
	return removed, errors.Join(errs...)
}
