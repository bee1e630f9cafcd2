package supervise

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// VerifyForUp is the verification policy of vessel up. The signed manifest
// is the file at signedPath, or, when signedPath is empty, the one `vessel
// install` recorded as current in the store root. It must pass every check
// of trust.Verify with opts (CAs, CRL, product, time), with every image
// checked in s, and its version must not be lower than the highest this
// machine accepted (recorded under root; a manifest that passes is
// recorded, so an older one is refused from then on).
func VerifyForUp(root string, s *store.Store, signedPath string, opts trust.Options) (*trust.VerifiedManifest, error) {
	if signedPath == "" {
		cur, err := registry.ReadCurrent(root)
		if err != nil {
			return nil, fmt.Errorf("no signed manifest given, and none installed: %w", err)
		}
		signedPath = filepath.Join(root, cur.Signed)
	}
	signed, err := bounded.ReadFile(signedPath, trust.MaxSignedSize)
	if err != nil {
		return nil, err
	}
	opts.Images = s
	opts.Versions = trust.OpenVersions(root)
	// Checked here (no rollback), recorded only once the services have
	// started (Supervisor.Versions): a manifest that fails to come up must
	// not make going back to the working one a rollback.
	opts.Record = false
	return trust.Verify(signed, opts)
}

// DetachTimeout bounds how long Detach waits for the services to start.
const DetachTimeout = 2 * time.Minute

// Detach starts a supervisor in the background and waits until it has
// started every service. argv and env are the command that runs it (the
// caller's own command line, marked so that it runs in the foreground);
// it gets a session of its own and logs to dir/supervisor.log. Detach
// returns the running supervisor's record, or an error with the end of
// its log when it exits first, and the path of the log.
func Detach(ctx context.Context, dir string, argv, env []string) (*Info, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(dir, "supervisor.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	start, _ := logf.Seek(0, io.SeekEnd)
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	child := &exec.Cmd{
		Path: exe, Args: argv, Env: env, Stdout: logf, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := child.Start(); err != nil {
		return nil, "", fmt.Errorf("start the supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	deadline := time.After(DetachTimeout)
	for {
		select {
		case err := <-exited:
			return nil, logPath, fmt.Errorf("the supervisor exited (%v):\n%s", err, tailFrom(logPath, start))
		case <-deadline:
			return nil, logPath, fmt.Errorf("the supervisor (pid %d) has not started every service after %s; see %s", child.Process.Pid, DetachTimeout, logPath)
		case <-ctx.Done():
			child.Process.Signal(syscall.SIGTERM)
			return nil, logPath, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		info, err := Running(dir)
		if err != nil || info.Owner.Pid != child.Process.Pid {
			continue
		}
		sts, _ := Services(dir)
		if len(sts) < len(info.Services) || !allStarted(sts) {
			continue
		}
		child.Process.Release()
		return info, logPath, nil
	}
}

func allStarted(sts []Status) bool {
	for _, s := range sts {
		if s.State == StateStarting {
			return false
		}
	}
	return true
}

func tailFrom(path string, off int64) string {
	b, _ := os.ReadFile(path)
	if off < int64(len(b)) {
		b = b[off:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
