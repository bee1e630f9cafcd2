package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoContainer is returned for a container name no live vessel runs.
var ErrNoContainer = errors.New("no such container")

// Info is one container a live vessel process runs (vessel run, a service
// of vessel up, a build step).
type Info struct {
	ID      string    `json:"id"`
	Image   string    `json:"image"`
	Command []string  `json:"command"`
	Created time.Time `json:"created"`
	// State is the runtime's (created, running, paused, stopped), or
	// "creating" before the runtime has created the container.
	State string `json:"state"`
	Owner int    `json:"ownerPid"` // the vessel process that runs it
}

// List returns the containers of live owners in the run directory, by
// creation time, with their state as their runtime reports it. Records of
// dead owners are skipped (the next run or Recover removes them).
func List(ctx context.Context, run string) ([]Info, error) {
	entries, err := os.ReadDir(containersDir(run))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := []Info{}
	states := map[string]map[string]string{} // runtime path and state root -> id -> status
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), newPrefix) {
			continue
		}
		rec, err := readRecord(filepath.Join(containersDir(run), e.Name()))
		if err != nil || !rec.Owner.Alive() {
			continue // gone meanwhile, or a dead owner's
		}
		in := Info{ID: rec.ID, Image: rec.Image, Command: rec.Command, Created: rec.Created, State: "creating", Owner: rec.Owner.Pid}
		if in.Command == nil {
			in.Command = []string{}
		}
		rt := rec.Runtime
		key := rt.Path + "\x00" + rt.StateRoot
		if states[key] == nil && rt.Path != "" {
			states[key] = map[string]string{}
			sts, err := rt.List(ctx)
			if err != nil {
				return nil, fmt.Errorf("list containers: %w", err)
			}
			for _, st := range sts {
				states[key][st.ID] = st.Status
			}
		}
		if st := states[key][rec.ID]; st != "" {
			in.State = st
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// live reads container id's record and checks that its owner runs.
func live(run, id string) (Record, error) {
	rec, err := readRecord(Dir(run, id))
	if errors.Is(err, os.ErrNotExist) || err == nil && !rec.Owner.Alive() {
		return rec, fmt.Errorf("container %s: %w", id, ErrNoContainer)
	}
	if err != nil {
		return rec, fmt.Errorf("container %s: %w", id, err)
	}
	return rec, nil
}

// Signal sends sig to the process of container id through its runtime.
// Its owner notices the exit and removes the container as always.
func Signal(ctx context.Context, run, id string, sig syscall.Signal) error {
	rec, err := live(run, id)
	if err != nil {
		return err
	}
	if err := rec.Runtime.Kill(ctx, id, sig); err != nil {
		return fmt.Errorf("signal container %s: %w", id, err)
	}
	return nil
}

// Stop sends SIGTERM to container id, waits up to timeout for its owner
// to have removed it, then sends SIGKILL and waits again (up to 30 s: the
// owner unmounts its root filesystem). killed reports that SIGTERM was not
// enough. A container that is still being created is killed at once.
func Stop(ctx context.Context, run, id string, timeout time.Duration) (killed bool, err error) {
	if err := Signal(ctx, run, id, syscall.SIGTERM); err != nil {
		return false, err
	}
	if waitRemoved(ctx, run, id, timeout) {
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("stop container %s: %w", id, err)
	}
	if err := Signal(ctx, run, id, syscall.SIGKILL); err != nil && !errors.Is(err, ErrNoContainer) {
		return true, err
	}
	if !waitRemoved(ctx, run, id, 30*time.Second) {
		return true, fmt.Errorf("stop container %s: still there 30s after SIGKILL (its owner, vessel pid %d, removes it)", id, ownerPid(run, id))
	}
	return true, nil
}

func ownerPid(run, id string) int {
	rec, _ := readRecord(Dir(run, id))
	return rec.Owner.Pid
}

// waitRemoved waits until container id's directory is gone or its owner
// has died, for up to timeout.
func waitRemoved(ctx context.Context, run, id string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := live(run, id); errors.Is(err, ErrNoContainer) {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ParseSignal reads a signal name (TERM, SIGTERM, term) or number.
func ParseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("%s: not a signal number", s)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%s: unknown signal (try TERM, KILL, HUP, INT)", s)
}
