// Package ociruntime turns a container description into an OCI runtime-spec
// bundle and runs it through an OCI runtime (runc or crun).
//
// The flow is data first: a Config (pure data) goes through Spec to a
// runtime-spec document, WriteBundle writes it as BUNDLE/config.json, and a
// Runtime, found by Detect, runs the bundle: Run in the foreground (vessel
// run), or Start detached plus Kill, Delete and List (the supervisor and
// crash clean-up). Mounting the root filesystem is internal/mount's job;
// this package only points the bundle at it.
//
// Vessel owns no container plumbing itself: namespaces, capabilities,
// cgroups and the pty are set up by the runtime from the bundle.
package ociruntime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Runtime is an OCI runtime binary and the state directory it keeps its
// containers in (passed as --root; vessel uses /run/vessel/runtime/NAME).
type Runtime struct {
	Name      string // "runc" or "crun"
	Path      string // absolute path of the binary
	StateRoot string
}

// Stdio is a container's standard streams. Nil means /dev/null. For Run,
// any reader/writer works (an *os.File is handed over directly, anything
// else is copied through a pipe); Start needs *os.File or nil, because the
// runtime hands the descriptors to a container that outlives the call.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// NoForward keeps Run from passing this process's signals to the
	// container: a supervisor that stops its services itself (SIGTERM,
	// then SIGKILL) sets it, so Ctrl-C reaches them as that SIGTERM.
	NoForward bool
}

// State is a container as the runtime lists it.
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"` // created, running, paused, stopped
	Bundle string `json:"bundle"`
}

// ErrNotExist is returned (wrapped) by Kill and Delete for an id the
// runtime does not know.
var ErrNotExist = errors.New("container does not exist")

// Error is a failure the runtime itself reported (as opposed to the
// container's process exiting non-zero). Msg is the runtime's own text.
type Error struct {
	Runtime, Op, ID string
	Msg             string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s %s: %s", e.Runtime, e.Op, e.ID, e.Msg)
}

// cleanupTimeout bounds the `delete --force` that runs after a container,
// whatever the caller's context says.
const cleanupTimeout = 30 * time.Second

// forwarded are the signals Run passes on to the container.
var forwarded = []os.Signal{
	unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT,
	unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGCONT,
}

func (r Runtime) command(ctx context.Context, logPath string, args ...string) *exec.Cmd {
	full := []string{"--root", r.StateRoot}
	if logPath != "" {
		full = append(full, "--log", logPath, "--log-format", "json")
	}
	if ctx == nil {
		return exec.Command(r.Path, append(full, args...)...)
	}
	return exec.CommandContext(ctx, r.Path, append(full, args...)...)
}

// Run runs the bundle's process in the foreground as container id and
// returns its exit code (128+N when a signal N killed it). Stdio is passed
// through; with a terminal spec and a tty on stdin the runtime proxies the
// pty and puts the tty in raw mode for the duration.
//
// While Run runs, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
// SIGWINCH and SIGCONT delivered to this process are forwarded to the
// container (the runtime passes them to the container's init). Cancelling
// ctx kills the container. On every path the container is deleted
// (`delete --force`) before Run returns, so no runtime state is left.
//
// err is nil when the container ran, whatever its exit code; it is an
// *Error when the runtime failed to create or start the container, and
// wraps ctx.Err() when ctx was cancelled.
func (r Runtime) Run(ctx context.Context, bundle, id string, stdio Stdio) (exitCode int, err error) {
	return r.RunNotify(ctx, bundle, id, stdio, nil)
}

// RunNotify is Run, calling started (if not nil) with the pid of the
// runtime process as soon as it has been started, before it creates the
// container: a caller records it so that crash recovery can kill a
// runtime its dead parent left (package container does).
//
// The runtime process gets SIGKILL if this process dies (PR_SET_PDEATHSIG):
// a vessel killed with SIGKILL does not leave a runtime that goes on to
// create its container after recovery has looked.
func (r Runtime) RunNotify(ctx context.Context, bundle, id string, stdio Stdio, started func(pid int)) (exitCode int, err error) {
	if !ValidID(id) {
		return -1, fmt.Errorf("run container %q: invalid id", id)
	}
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("run container %s: %w", id, err)
	}
	if r.exists(id) {
		// Checked first so that the clean-up below never removes a
		// container this call did not create.
		return -1, &Error{Runtime: r.Name, Op: "run", ID: id, Msg: "container already exists"}
	}
	// The runtime's log goes next to its bundle (on the run directory's
	// tmpfs as a rule): a temporary file in $TMPDIR, on a disk, cost
	// about 0.7 ms of every start. A bundle directory this process may
	// not write to falls back to $TMPDIR.
	logf, err := os.CreateTemp(bundle, ".runtime-*.log")
	if err != nil {
		if logf, err = os.CreateTemp("", "vessel-"+r.Name+"-*.log"); err != nil {
			return -1, fmt.Errorf("run container %s: %w", id, err)
		}
	}
	logPath := logf.Name()
	logf.Close()
	defer os.Remove(logPath)

	cmd := r.command(nil, logPath, "run", "--bundle", bundle, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	cmd.Dir = bundle // where runc goes anyway: the runtime process is found under the bundle
	if !IsTerminal(stdio.Stdin) {
		// Own process group: a signal for vessel reaches the container
		// once, through the forwarding below, not also from the tty.
		// With a tty on stdin the runtime must stay in the foreground
		// group to read it (it puts the tty in raw mode, so ^C arrives as
		// a byte anyway).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}

	sigc := make(chan os.Signal, 16)
	if !stdio.NoForward {
		signal.Notify(sigc, forwarded...)
		defer signal.Stop(sigc)
	}

	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("run container %s: start %s: %w", id, r.Name, err)
	}
	if started != nil {
		started(cmd.Process.Pid)
	}
	defer func() {
		// Always remove what the runtime may have left. It deletes a
		// container that exited normally itself, so skip the extra
		// runtime call when its state directory is already gone.
		if !r.exists(id) {
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if derr := r.Delete(dctx, id, true); derr != nil && err == nil {
			err = fmt.Errorf("run container %s: clean up: %w", id, derr)
		}
	}()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var (
		waitErr   error
		cancelled bool
		killTick  <-chan time.Time
		killStart time.Time
	)
loop:
	for {
		select {
		case s := <-sigc:
			_ = cmd.Process.Signal(s) // the runtime may have just exited
		case <-ctx.Done():
			if !cancelled {
				cancelled = true
				killStart = time.Now()
				t := time.NewTicker(50 * time.Millisecond)
				defer t.Stop()
				killTick = t.C
				r.killForCancel(id, cmd, killStart)
			}
		case <-killTick:
			r.killForCancel(id, cmd, killStart)
		case waitErr = <-done:
			break loop
		}
	}
	code := exitStatus(cmd.ProcessState)
	if cancelled {
		return code, fmt.Errorf("run container %s: %w", id, ctx.Err())
	}
	if code != 0 {
		if msg := runtimeError(logPath); msg != "" {
			return code, &Error{Runtime: r.Name, Op: "run", ID: id, Msg: msg}
		}
	}
	if code < 0 {
		return code, fmt.Errorf("run container %s: %w", id, waitErr)
	}
	return code, nil
}

// killForCancel kills the container through the runtime; before the
// container exists that fails, so Run retries on a ticker, and after five
// seconds it kills the runtime process itself (the deferred delete --force
// then removes the container).
func (r Runtime) killForCancel(id string, cmd *exec.Cmd, since time.Time) {
	if time.Since(since) > 5*time.Second {
		_ = cmd.Process.Kill()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = r.Kill(ctx, id, unix.SIGKILL)
}

// Start creates and starts container id from bundle, detached, and returns
// the pid of its process (in vessel's pid namespace). The container keeps
// stdio's descriptors; a bundle with a terminal is refused (a detached
// pty needs a console socket, which vessel does not use). To learn when it exits, the caller either is a
// child subreaper (prctl PR_SET_CHILD_SUBREAPER) and waits for pid, or
// polls List. The caller removes it with Delete.
func (r Runtime) Start(ctx context.Context, bundle, id string, stdio Stdio) (pid int, err error) {
	if !ValidID(id) {
		return -1, fmt.Errorf("start container %q: invalid id", id)
	}
	files := []any{stdio.Stdin, stdio.Stdout, stdio.Stderr}
	for i, f := range files {
		if f == nil {
			continue
		}
		if _, ok := f.(*os.File); !ok {
			return -1, fmt.Errorf("start container %s: stdio stream %d must be an *os.File or nil", id, i)
		}
	}
	if r.exists(id) {
		// Checked first so that the clean-up below never deletes a
		// container this call did not create.
		return -1, &Error{Runtime: r.Name, Op: "start", ID: id, Msg: "container already exists"}
	}
	tmp, err := os.MkdirTemp("", "vessel-start-")
	if err != nil {
		return -1, fmt.Errorf("start container %s: %w", id, err)
	}
	defer os.RemoveAll(tmp)
	pidFile := tmp + "/pid"
	logPath := tmp + "/log"
	cmd := r.command(ctx, logPath, "run", "--detach", "--pid-file", pidFile, "--bundle", bundle, id)
	if stdio.Stdin != nil {
		cmd.Stdin = stdio.Stdin
	}
	if stdio.Stdout != nil {
		cmd.Stdout = stdio.Stdout
	}
	if stdio.Stderr != nil {
		cmd.Stderr = stdio.Stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		msg := runtimeError(logPath)
		if msg == "" {
			msg = err.Error()
		}
		dctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if derr := r.Delete(dctx, id, true); derr != nil {
			msg += "; clean up: " + derr.Error()
		}
		return -1, &Error{Runtime: r.Name, Op: "start", ID: id, Msg: msg}
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return -1, fmt.Errorf("start container %s: read pid: %w", id, err)
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1, fmt.Errorf("start container %s: pid file %q: %w", id, b, err)
	}
	return pid, nil
}

// Kill sends sig to container id's process. A container that does not
// exist gives an error wrapping ErrNotExist.
func (r Runtime) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	return r.simple(ctx, "kill", id, id, strconv.Itoa(int(sig)))
}

// Delete removes container id's runtime state. Without force, the
// container must be stopped, and one that does not exist gives an error
// wrapping ErrNotExist. With force, a running container is killed first
// and a missing one is not an error (idempotent, for clean-up paths).
func (r Runtime) Delete(ctx context.Context, id string, force bool) error {
	if !force {
		return r.simple(ctx, "delete", id, id)
	}
	err := r.simple(ctx, "delete", id, "--force", id)
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	return err
}

func (r Runtime) simple(ctx context.Context, op, id string, args ...string) error {
	var out bytes.Buffer
	cmd := r.command(ctx, "", append([]string{op}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if msg == "" {
			msg = err.Error()
		}
		e := &Error{Runtime: r.Name, Op: op, ID: id, Msg: msg}
		if !r.exists(id) {
			return fmt.Errorf("%w: %w", ErrNotExist, e)
		}
		return e
	}
	return nil
}

func (r Runtime) exists(id string) bool {
	_, err := os.Stat(r.StateRoot + "/" + id)
	return err == nil
}

// List returns the containers in the runtime's state directory.
func (r Runtime) List(ctx context.Context) ([]State, error) {
	var out, errOut bytes.Buffer
	cmd := r.command(ctx, "", "list", "--format", "json")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return nil, &Error{Runtime: r.Name, Op: "list", Msg: strings.TrimSpace(errOut.String() + " " + err.Error())}
	}
	var states []State
	if b := bytes.TrimSpace(out.Bytes()); len(b) > 0 && !bytes.Equal(b, []byte("null")) {
		if err := json.Unmarshal(b, &states); err != nil {
			return nil, fmt.Errorf("%s list: decode %q: %w", r.Name, b, err)
		}
	}
	return states, nil
}

// exitStatus maps a finished process to a shell-style exit code.
func exitStatus(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// runtimeError returns the error messages in a runtime's JSON log
// (runc and crun both write {"level":"error","msg":...} lines).
func runtimeError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var msgs []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var l struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && (l.Level == "error" || l.Level == "fatal") && l.Msg != "" {
			msgs = append(msgs, l.Msg)
		}
	}
	return strings.Join(msgs, "; ")
}

// IsTerminal reports whether r is a terminal. A Config with Terminal set
// needs one on stdin when it is Run: check first and tell the user (runc
// itself only says "open /dev/tty: no such device or address").
func IsTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
