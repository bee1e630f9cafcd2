package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/ociruntime"
)

// stopper ends a foreground container the way podman does: before the
// container starts, SIGINT or SIGTERM aborts the run; once it runs, the
// first one is passed on (ociruntime forwards it) and the container gets
// timeout to exit; a second one, or the timeout, kills it (abort cancels
// the run, which kills the container).
type stopper struct {
	sigc chan os.Signal
	done chan struct{}

	mu          sync.Mutex
	sig         syscall.Signal
	interrupted bool
}

func stopOnSignals(abort func(), started *atomic.Bool, timeout time.Duration) *stopper {
	s := &stopper{sigc: make(chan os.Signal, 4), done: make(chan struct{})}
	signal.Notify(s.sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		var (
			timer <-chan time.Time
			first syscall.Signal
		)
		kill := func(sig syscall.Signal) {
			s.mu.Lock()
			s.sig, s.interrupted = sig, true
			s.mu.Unlock()
			abort()
		}
		for {
			select {
			case v := <-s.sigc:
				sig, _ := v.(syscall.Signal)
				if !started.Load() {
					kill(sig)
					return
				}
				if first == 0 {
					first = sig
					timer = time.After(timeout)
					continue
				}
				kill(first)
				return
			case <-timer:
				kill(first)
				return
			case <-s.done:
				return
			}
		}
	}()
	return s
}

// result reports whether the run was ended by a signal, and which.
func (s *stopper) result() (syscall.Signal, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sig, s.interrupted
}

func (s *stopper) close() {
	signal.Stop(s.sigc)
	close(s.done)
}

// parseEntrypoint reads --entrypoint: a JSON array, or one path ("" for
// none), as podman does.
func parseEntrypoint(v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	if strings.HasPrefix(v, "[") {
		var ep []string
		if err := json.Unmarshal([]byte(v), &ep); err != nil {
			return nil, usageError{"--entrypoint " + v + ": not a JSON array of strings (give a path, or [\"PATH\", \"ARG\"...])"}
		}
		return ep, nil
	}
	return []string{v}, nil
}

// execExitCode gives a runtime's failure to start the container's command
// podman's exit codes: 127 when the command does not exist, 126 when it
// cannot be executed; other errors are returned as they are.
func execExitCode(err error) error {
	var re *ociruntime.Error
	if !errors.As(err, &re) {
		return err
	}
	msg := strings.ToLower(re.Msg)
	if !strings.Contains(msg, "exec") {
		return err
	}
	switch {
	case strings.Contains(msg, "no such file") || strings.Contains(msg, "not found"):
		return exitError{code: 127, err: err}
	case strings.Contains(msg, "permission denied") || strings.Contains(msg, "exec format error"):
		return exitError{code: 126, err: err}
	}
	return err
}
