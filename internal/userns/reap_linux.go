package userns

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// RunReaping runs args[0] (looked up in PATH) with args as a child and returns its exit code
// (128+N for signal N), forwarding SIGTERM and SIGHUP to it. It also reaps
// any other child that exits meanwhile: in the namespace `vessel unshare`
// makes, the caller is pid 1, and layer mounts made by vessel commands in
// it leave their squashfuse daemons to it.
func RunReaping(args []string) (int, error) {
	path, err := exec.LookPath(args[0])
	if err != nil {
		return 1, err
	}
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)
	pid, err := syscall.ForkExec(path, args, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	if err != nil {
		return 1, fmt.Errorf("start %s: %w", path, err)
	}
	go func() {
		for s := range sigc {
			_ = syscall.Kill(pid, s.(syscall.Signal))
		}
	}()
	for {
		var ws syscall.WaitStatus
		p, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 1, fmt.Errorf("wait for %s: %w", path, err)
		}
		if p != pid {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ws.ExitStatus(), nil
	}
}
