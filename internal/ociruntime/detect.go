package ociruntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/faultpoint"
	"github.com/vesselos/vessel/internal/proc"
)

// Candidates are the runtimes Detect tries, in order, when none is asked
// for. runc comes first: it is the reference implementation, and the one
// that works on every cgroup layout vessel meets (crun 1.8 refuses hybrid
// cgroups); crun is faster to start where it works and is picked with
// want "crun".
var Candidates = []string{"runc", "crun"}

// Skipped is a runtime Detect did not pick, and why (the runtime's own
// error text when its probe failed).
type Skipped struct {
	Name, Reason string
}

// ErrNoRuntime is returned (wrapped) by Detect when no runtime works.
var ErrNoRuntime = errors.New("no working OCI runtime")

// Detect finds a working OCI runtime. want "" tries Candidates in order;
// otherwise only want (a name looked up in PATH, or a path) is tried, and
// an error carrying its probe failure comes back if it does not work.
//
// A candidate works when it really creates a container: Detect writes a
// throwaway bundle (empty read-only rootfs, the same Spec vessel uses)
// under stateRoot/probes, runs `create`, then `delete --force`. The probe
// directory records who probes (pid and start time) and with which
// runtime, so that the probe container and bundle of a vessel killed
// part-way are found and removed by the next Detect. The result is cached in stateRoot
// (vessel uses /run/vessel/runtime, so once per boot), keyed by the
// binary's path, size and modification time. The Runtime returned keeps
// its containers in stateRoot/NAME. Skipped lists the candidates tried
// before the one returned (or all of them on error).
func Detect(ctx context.Context, want, stateRoot string) (Runtime, []Skipped, error) {
	if stateRoot == "" || !filepath.IsAbs(stateRoot) {
		return Runtime{}, nil, fmt.Errorf("detect runtime: state root %q is not an absolute path", stateRoot)
	}
	if err := os.MkdirAll(stateRoot, 0o700); err != nil {
		return Runtime{}, nil, fmt.Errorf("detect runtime: %w", err)
	}
	removeStaleProbes(stateRoot)
	names := Candidates
	if want != "" {
		names = []string{want}
	}
	var skipped []Skipped
	for _, name := range names {
		r, reason := probeCached(ctx, name, stateRoot)
		if reason == "" {
			return r, skipped, nil
		}
		if err := ctx.Err(); err != nil {
			return Runtime{}, skipped, fmt.Errorf("detect runtime: %w", err)
		}
		skipped = append(skipped, Skipped{Name: name, Reason: reason})
	}
	if want != "" {
		return Runtime{}, skipped, fmt.Errorf("%w: runtime %s does not work here: %s", ErrNoRuntime, want, skipped[0].Reason)
	}
	var b strings.Builder
	for _, s := range skipped {
		fmt.Fprintf(&b, "; %s: %s", s.Name, s.Reason)
	}
	return Runtime{}, skipped, fmt.Errorf("%w (install runc or crun)%s", ErrNoRuntime, b.String())
}

// probeVersion changes whenever the probe container changes, so that a
// cached verdict about an older probe is not reused.
const probeVersion = 2

type probeRecord struct {
	Version int    `json:"version"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
	Reason  string `json:"reason"` // empty: works
}

// probeCached returns the runtime named name and "" when it works, or the
// reason it does not.
func probeCached(ctx context.Context, name, stateRoot string) (Runtime, string) {
	path, err := exec.LookPath(name)
	if err != nil {
		return Runtime{}, fmt.Sprintf("not found: %v", err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return Runtime{}, err.Error()
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Runtime{}, err.Error()
	}
	base := filepath.Base(path)
	r := Runtime{Name: base, Path: path, StateRoot: filepath.Join(stateRoot, base)}
	key := probeRecord{Version: probeVersion, Path: path, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
	cache := filepath.Join(stateRoot, "probe-"+base+".json")
	if b, err := os.ReadFile(cache); err == nil {
		var rec probeRecord
		if json.Unmarshal(b, &rec) == nil && rec.Version == key.Version && rec.Path == key.Path && rec.Size == key.Size && rec.ModTime == key.ModTime {
			return r, rec.Reason
		}
	}
	key.Reason = probe(ctx, r)
	if ctx.Err() != nil {
		return r, key.Reason // not cached: the probe was interrupted
	}
	if b, err := json.Marshal(key); err == nil {
		_ = atomicfile.Write(cache, b, 0o600) // a missing cache only costs a probe
	}
	return r, key.Reason
}

// probes is the directory of the probe bundles under a state root.
func probesDir(stateRoot string) string { return filepath.Join(stateRoot, "probes") }

// ProbePrefix starts the id of every probe container: crash recovery of
// containers leaves these to Detect, which knows whether their prober is
// alive.
const ProbePrefix = "vessel-probe-"

// probeOwner is the record of one probe, probes/DIR/owner.json.
type probeOwner struct {
	ID      string  `json:"id"`
	Owner   proc.ID `json:"owner"`
	Runtime Runtime `json:"runtime"`
}

// removeStaleProbes removes the probe containers and bundles of vessel
// processes that died while probing. It is best effort: what it cannot
// remove now, the next Detect tries again.
func removeStaleProbes(stateRoot string) {
	entries, _ := os.ReadDir(probesDir(stateRoot))
	for _, e := range entries {
		dir := filepath.Join(probesDir(stateRoot), e.Name())
		var rec probeOwner
		b, err := os.ReadFile(filepath.Join(dir, "owner.json"))
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err == nil && rec.Owner.Alive() {
			continue
		}
		if err == nil && ValidID(rec.ID) && strings.HasPrefix(rec.ID, ProbePrefix) && rec.Runtime.Path != "" {
			ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
			derr := rec.Runtime.Delete(ctx, rec.ID, true)
			cancel()
			if derr != nil {
				continue
			}
		}
		_ = os.RemoveAll(dir)
	}
}

// probeCount counts probes run (tests check that a cached verdict runs
// none).
var probeCount atomic.Int64

// probe creates and deletes a throwaway container and returns "" or the
// runtime's error.
func probe(ctx context.Context, r Runtime) string {
	probeCount.Add(1)
	if err := os.MkdirAll(probesDir(filepath.Dir(r.StateRoot)), 0o700); err != nil {
		return "probe: " + err.Error()
	}
	dir, err := os.MkdirTemp(probesDir(filepath.Dir(r.StateRoot)), "")
	if err != nil {
		return "probe: " + err.Error()
	}
	defer os.RemoveAll(dir)
	id := fmt.Sprintf("%s%d-%s", ProbePrefix, os.Getpid(), filepath.Base(dir))
	// The record goes first: a crash from here on leaves something the
	// next Detect can find.
	rec, err := json.Marshal(probeOwner{ID: id, Owner: proc.Self(), Runtime: r})
	if err != nil {
		return "probe: " + err.Error()
	}
	if err := atomicfile.WriteVolatile(filepath.Join(dir, "owner.json"), rec, 0o600); err != nil {
		return "probe: " + err.Error()
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return "probe: " + err.Error()
	}
	// runc checks before `create` returns that argv[0] is an executable
	// file; it is never executed.
	if err := os.WriteFile(filepath.Join(rootfs, "probe"), nil, 0o755); err != nil {
		return "probe: " + err.Error()
	}
	s, err := Spec(Config{ID: id, Rootfs: rootfs, Args: []string{"/probe"}, ReadOnly: true})
	if err != nil {
		return "probe: " + err.Error()
	}
	if err := WriteBundle(dir, s); err != nil {
		return "probe: " + err.Error()
	}
	logPath := filepath.Join(dir, "log")
	// A file, not a pipe: the created container holds the runtime's stdio
	// until it is deleted, so a pipe would never reach EOF.
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		return "probe: " + err.Error()
	}
	defer out.Close()
	cmd := r.command(ctx, logPath, "create", "--bundle", dir, id)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runErr := cmd.Run()
	faultpoint.Pause(faultpoint.ProbeCreated)
	// Always delete: a failed create can leave state behind.
	dctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	delErr := r.Delete(dctx, id, true)
	if runErr != nil {
		msg := runtimeError(logPath)
		if msg == "" {
			b, _ := os.ReadFile(out.Name())
			msg = strings.TrimSpace(string(b))
		}
		if msg == "" {
			msg = runErr.Error()
		}
		return msg
	}
	if delErr != nil {
		return "delete after probe: " + delErr.Error()
	}
	return ""
}
