package build

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// tailLines is how many lines of a failed script's output an error keeps.
const tailLines = 20

// StepError is a failed build step: which image, which step of the plan,
// what it was doing (base, imports, run, layer, commit, cache), where in
// the recipe, and for a failed run script its exit code and the last lines
// of its output.
type StepError struct {
	Image       string
	Step, Steps int
	Phase       string
	File        string
	// Prerequisite is set when File is a prerequisite of the recipe
	// being built (config: prerequisites:), not the recipe itself.
	Prerequisite bool
	Line         int      // 0 when no single line is concerned
	ExitCode     int      // the run script's exit code; -1 when it did not run to an exit
	Tail         []string // last lines of the script's output
	Err          error    // the cause; nil when the script just exited non-zero
}

func (e *StepError) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "build %s (step %d/%d", e.Image, e.Step, e.Steps)
	if e.Prerequisite {
		fmt.Fprintf(&sb, ", prerequisite %s", e.File)
	}
	fmt.Fprintf(&sb, "): %s", e.Phase)
	if e.Line > 0 {
		fmt.Fprintf(&sb, " (%s:%d)", e.File, e.Line)
	}
	switch {
	case e.Err != nil:
		fmt.Fprintf(&sb, ": %v", e.Err)
	case e.ExitCode >= 0:
		fmt.Fprintf(&sb, ": the script exited with code %d", e.ExitCode)
	}
	if len(e.Tail) > 0 {
		fmt.Fprintf(&sb, "\nlast %d lines of output:", len(e.Tail))
		for _, l := range e.Tail {
			sb.WriteString("\n  | " + l)
		}
	}
	return sb.String()
}

func (e *StepError) Unwrap() error { return e.Err }

// tailWriter keeps the last max lines written to it.
type tailWriter struct {
	max     int
	buf     [][]byte
	partial []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.partial = append(t.partial, p...)
			if len(t.partial) > 4096 {
				t.partial = t.partial[len(t.partial)-4096:]
			}
			break
		}
		line := append(t.partial, p[:i]...)
		t.partial = nil
		t.buf = append(t.buf, line)
		if len(t.buf) > t.max {
			t.buf = t.buf[len(t.buf)-t.max:]
		}
		p = p[i+1:]
	}
	return n, nil
}

func (t *tailWriter) lines() []string {
	var out []string
	for _, l := range t.buf {
		out = append(out, strings.TrimRight(string(l), "\r"))
	}
	if len(t.partial) > 0 {
		out = append(out, string(t.partial))
		if len(out) > t.max {
			out = out[1:]
		}
	}
	return out
}

// lockedWriter serialises writes from the container's stdout and stderr
// copiers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
