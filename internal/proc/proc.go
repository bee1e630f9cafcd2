// Package proc identifies processes across time: a pid together with the
// process's start time (from /proc/PID/stat), so that a record naming a
// process that has exited is never mistaken for an unrelated process that
// later got the same pid. Run-state records (mounts, containers, the
// supervisor, runtime probes) name their owners this way, and crash
// recovery asks Alive before it removes anything.
package proc

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// ID is one process: its pid and start time (clock ticks since boot). The
// zero ID names no process.
type ID struct {
	Pid       int    `json:"pid,omitempty"`
	StartTime uint64 `json:"startTime,omitempty"`
}

// Self is the calling process.
func Self() ID { return Of(os.Getpid()) }

// Of is process pid as it is now; the zero ID if it does not exist or has
// exited (a zombie has exited).
func Of(pid int) ID {
	st := startTime(pid)
	if st == 0 {
		return ID{}
	}
	return ID{Pid: pid, StartTime: st}
}

// Alive reports whether the process still runs: a process with its pid
// exists, has not exited and started when the ID says. The zero ID is
// never alive.
func (id ID) Alive() bool {
	return id.Pid > 0 && id.StartTime != 0 && startTime(id.Pid) == id.StartTime
}

// Running reports whether some process with this pid exists and has not
// exited, whoever it is.
func Running(pid int) bool { return startTime(pid) != 0 }

// Kill sends SIGKILL to the process if it is still the one id names (to
// its whole process group when it leads one), and waits up to timeout
// until it has exited. A process that is already gone is not an error.
func (id ID) Kill(timeout time.Duration) error {
	if !id.Alive() {
		return nil
	}
	if pgid, err := syscall.Getpgid(id.Pid); err == nil && pgid == id.Pid {
		_ = syscall.Kill(-id.Pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(id.Pid, syscall.SIGKILL)
	deadline := time.Now().Add(timeout)
	for id.Alive() {
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d is still running %s after SIGKILL", id.Pid, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (id ID) String() string { return fmt.Sprintf("pid %d (started at tick %d)", id.Pid, id.StartTime) }

// startTime reads a process's start time, or 0 if it does not exist or
// has exited.
func startTime(pid int) uint64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and ')'
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0 // a zombie has exited; only its parent has not reaped it
	}
	var t uint64
	fmt.Sscan(f[19], &t)
	return t
}
