package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/proc"
)

// Service states.
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StateBackoff  = "backoff" // waiting to restart
	StateExited   = "exited"  // ended and its policy does not restart it
	StateFailed   = "failed"  // could not be started (mount, bundle or runtime error)
	StateStopping = "stopping"
)

// Status is what `vessel ps` shows for one service. The supervisor writes
// it to <dir>/services/NAME.json at every change.
type Status struct {
	Name      string    `json:"name"`
	State     string    `json:"state"`
	Image     string    `json:"image"`  // reference from the manifest (informational)
	Digest    string    `json:"digest"` // image manifest digest
	Restarts  int       `json:"restarts"`
	Started   time.Time `json:"started,omitzero"` // of the current (or last) run
	ExitCode  *int      `json:"exitCode,omitempty"`
	Error     string    `json:"error,omitempty"`
	NextStart time.Time `json:"nextStart,omitzero"`
	Restart   string    `json:"restart"` // policy
}

// Info is the record of a running `vessel up`, in <dir>/supervisor.json.
type Info struct {
	Owner    proc.ID   `json:"owner"`
	Product  string    `json:"product"`
	Version  int64     `json:"version"`
	Manifest string    `json:"manifest"` // digest of the signed manifest
	Started  time.Time `json:"started"`
	Services []string  `json:"services"`
}

func servicesDir(dir string) string      { return filepath.Join(dir, "services") }
func statusFile(dir, name string) string { return filepath.Join(servicesDir(dir), name+".json") }
func supervisorFile(dir string) string   { return filepath.Join(dir, "supervisor.json") }
func controlSocket(dir string) string    { return filepath.Join(dir, "control.sock") }
func LogFile(dir, name string) string    { return filepath.Join(dir, "logs", name+".log") }
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(path, append(b, '\n'), 0o644)
}

// ErrNotRunning means no supervisor is running.
var ErrNotRunning = errors.New("no vessel up is running")

// Running returns the record of the live supervisor, or ErrNotRunning.
func Running(dir string) (*Info, error) {
	b, err := os.ReadFile(supervisorFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotRunning
	}
	if err != nil {
		return nil, err
	}
	var s Info
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s is damaged: %v", supervisorFile(dir), err)
	}
	if !s.Owner.Alive() {
		return nil, fmt.Errorf("%w (pid %d exited without cleaning up; `vessel up` or `vessel down` will)", ErrNotRunning, s.Owner.Pid)
	}
	return &s, nil
}

// Services returns the status of every service the last supervisor ran,
// sorted by name.
func Services(dir string) ([]Status, error) {
	entries, err := os.ReadDir(servicesDir(dir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var out []Status
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(servicesDir(dir), e.Name()))
		if err != nil {
			return nil, err
		}
		var s Status
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("service state %s is damaged: %v", e.Name(), err)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
