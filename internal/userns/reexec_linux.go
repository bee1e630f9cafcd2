package userns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// EnvMarker is the environment variable that tells a vessel process where
// it stands: unset outside, "1" inside a namespace Reexec made (and in
// every process started in it, such as the shell of `vessel unshare`).
// The values "wait:FD" and "init:FD" are Reexec's own, for the moments before
// the ids are mapped and just after.
const EnvMarker = "_VESSEL_USERNS"

// Inside reports whether this process runs in a namespace made by Reexec.
func Inside() bool { return os.Getenv(EnvMarker) == "1" }

// Needed reports whether Reexec would create a namespace: the caller is not
// root and is not inside one already.
func Needed() bool { return os.Geteuid() != 0 && os.Getenv(EnvMarker) == "" }

// Options tune the namespace Reexec makes.
type Options struct {
	// PrivateDirs each get a fresh tmpfs (mode 0700) in the new mount
	// namespace, created if missing: state that only means something in
	// this namespace (mount records, layer mount points, runtime state)
	// lives there and disappears with it, so a killed vessel leaves
	// nothing behind and concurrent rootless vessels do not see each
	// other's mounts.
	PrivateDirs []string
}

// Reexec makes sure the caller runs as root in a user namespace that maps
// the calling user's subordinate ids (see the package comment).
//
//   - As real root, or already inside, it does nothing: handled is false
//     and the caller carries on.
//   - As an unprivileged user it checks that user namespaces are allowed,
//     that newuidmap and newgidmap exist and that the user has subordinate
//     ids (each failure is an error saying how to fix it), then runs this
//     program again, with the same arguments and stdio, in new user, mount
//     and pid namespaces, maps the ids with newuidmap/newgidmap, and waits:
//     handled is true and exitCode is the child's (128+N for signal N).
//     The caller returns that code and does nothing else. While the child
//     runs, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 (and, when stdin is not a
//     terminal, SIGINT, SIGQUIT, SIGWINCH and SIGCONT, which a terminal
//     already sends to the whole foreground group) are forwarded to it.
//   - In that child, the first call blocks until the ids are mapped and
//     starts the program once more (so that it holds capabilities in the
//     namespace); the second makes the mount tree private, mounts a /proc
//     for the new pid namespace and a tmpfs on each of opt.PrivateDirs,
//     sets EnvMarker to "1" and returns handled false.
//
// The child is pid 1 of its pid namespace, and the namespace is killed
// with the parent (PR_SET_PDEATHSIG): when it ends, for whatever reason,
// the kernel kills every process left in it (squashfuse daemons included)
// and its mounts go away with it.
//
// Call it at the top of a command, before anything with side effects: the
// code before it runs twice more in the child.
func Reexec(ctx context.Context, opt Options) (handled bool, exitCode int, err error) {
	switch v := os.Getenv(EnvMarker); {
	case v == "1":
		return false, 0, nil
	case strings.HasPrefix(v, "wait:"):
		return true, 1, waitAndExec(v)
	case strings.HasPrefix(v, "init:"):
		if err := setup(v, opt); err != nil {
			return true, 1, fmt.Errorf("set up the user namespace: %w", err)
		}
		return false, 0, os.Setenv(EnvMarker, "1")
	case v != "":
		return true, 1, fmt.Errorf("%s=%q in the environment: unset it", EnvMarker, v)
	}
	if os.Geteuid() == 0 {
		return false, 0, nil
	}
	plan, err := Preflight()
	if err != nil {
		return true, 1, err
	}
	code, err := runChild(ctx, plan)
	return true, code, err
}

// Preflight checks everything Reexec needs, for the calling user, and
// returns the id mapping it would apply.
func Preflight() (*Plan, error) {
	if err := CheckSysctls(ReadSysctl); err != nil {
		return nil, err
	}
	for _, h := range []string{"newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(h); err != nil {
			return nil, fmt.Errorf("%w: running rootless needs %s to map subordinate ids; install the uidmap package (apt-get install uidmap)", ErrNoHelper, h)
		}
	}
	return Load(CurrentUser())
}

// childFD is the descriptor the child waits on (ExtraFiles[0]).
const childFD = 3

func runChild(ctx context.Context, plan *Plan) (int, error) {
	if err := ctx.Err(); err != nil {
		return 1, err
	}
	exe, err := os.Executable()
	if err != nil {
		return 1, fmt.Errorf("find this program to run it in a user namespace: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 1, err
	}
	defer w.Close()

	tty := isTerminal(os.Stdin)
	// Pdeathsig fires when the thread that started the child exits: keep
	// this goroutine on its thread until the child is gone.
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(withoutMarker(os.Environ()), EnvMarker+"=wait:"+strconv.Itoa(childFD))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID,
		Pdeathsig:  unix.SIGKILL,
		// Without a terminal the child gets its own process group, so a
		// signal for vessel reaches it once, through the forwarding below.
		Setpgid: !tty,
	}
	forwarded := []os.Signal{unix.SIGTERM, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2}
	if !tty {
		forwarded = append(forwarded, unix.SIGINT, unix.SIGQUIT, unix.SIGWINCH, unix.SIGCONT)
	} else {
		// The terminal sends these to the child (same foreground group).
		signal.Ignore(unix.SIGINT, unix.SIGQUIT)
		defer signal.Reset(unix.SIGINT, unix.SIGQUIT)
	}
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, forwarded...)
	defer signal.Stop(sigc)

	if err := cmd.Start(); err != nil {
		r.Close()
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EACCES) {
			return 1, fmt.Errorf("%w: cannot create a user namespace (%v); check kernel.unprivileged_userns_clone, user.max_user_namespaces and any AppArmor/SELinux policy", ErrDisabled, err)
		}
		return 1, fmt.Errorf("start %s in a user namespace: %w", exe, err)
	}
	r.Close()
	if err := mapIDs(cmd.Process.Pid, plan); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 1, err
	}
	// w stays open until the child is gone: the child finds out from it
	// whether this process still lives (see setup).
	if _, err := w.Write([]byte{'g'}); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 1, fmt.Errorf("release the child in the user namespace: %w", err)
	}

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigc:
			_ = cmd.Process.Signal(s)
		case err := <-done:
			ps := cmd.ProcessState
			if ps == nil {
				return 1, err
			}
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal()), nil
			}
			return ps.ExitCode(), nil
		}
	}
}

// mapIDs writes the child's uid_map and gid_map through the setuid
// helpers (an unprivileged process may write only its own id itself).
func mapIDs(pid int, plan *Plan) error {
	for _, h := range []struct {
		name string
		m    []IDMap
	}{{"newuidmap", plan.UIDs}, {"newgidmap", plan.GIDs}} {
		args := append([]string{strconv.Itoa(pid)}, Args(h.m)...)
		out, err := exec.Command(h.name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s (is %s setuid root, and are the ranges in %s and %s yours?)",
				h.name, strings.Join(args, " "), err, bytes.TrimSpace(out), h.name, SubUIDFile, SubGIDFile)
		}
	}
	return nil
}

// waitAndExec is the child before its ids are mapped: it has no
// capabilities that survive exec yet, so it waits for the parent, then
// starts the program again as root in the namespace.
func waitAndExec(marker string) error {
	fd, err := strconv.Atoi(strings.TrimPrefix(marker, "wait:"))
	if err != nil {
		return fmt.Errorf("%s=%q: bad descriptor", EnvMarker, marker)
	}
	// Not closed: the descriptor goes on to the next program, which
	// watches the parent through it.
	f := os.NewFile(uintptr(fd), "userns-sync")
	var b [1]byte
	if _, err = io.ReadFull(f, b[:]); err != nil || b[0] != 'g' {
		return errors.New("the parent process gave up setting up the user namespace")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	env := append(withoutMarker(os.Environ()), EnvMarker+"=init:"+strconv.Itoa(fd))
	return fmt.Errorf("start %s in the user namespace: %w", exe, unix.Exec(exe, os.Args, env))
}

// setup runs as root in the fresh namespaces.
func setup(marker string, opt Options) error {
	// Gaining capabilities at exec cleared the parent-death signal the
	// parent asked for: ask again, then make sure the parent did not die
	// before that (its end of the sync pipe would be closed).
	fd, err := strconv.Atoi(strings.TrimPrefix(marker, "init:"))
	if err != nil {
		return fmt.Errorf("%s=%q: bad descriptor", EnvMarker, marker)
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("set the parent-death signal: %w", err)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 0); err != nil || (n > 0 && pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0) {
		return errors.New("the parent process is gone")
	}
	unix.Close(fd)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// A /proc for the new pid namespace, so that pids (and /proc/PID of
	// the processes vessel starts) agree with what getpid says.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc for the new pid namespace: %w", err)
	}
	for _, d := range opt.PrivateDirs {
		d = filepath.Clean(d)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
			return fmt.Errorf("mount a private tmpfs on %s: %w", d, err)
		}
	}
	return nil
}

func withoutMarker(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, EnvMarker+"=") {
			out = append(out, e)
		}
	}
	return out
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
