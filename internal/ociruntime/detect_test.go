package ociruntime

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func hybridCgroups() bool {
	_, err := os.Stat("/sys/fs/cgroup/unified/cgroup.controllers")
	return err == nil
}

func TestDetect(t *testing.T) {
	needRunc(t)
	state := t.TempDir()
	ctx := context.Background()

	// Try crun first so that, where it fails, Skipped carries why.
	defer func(c []string) { Candidates = c }(Candidates)
	Candidates = []string{"crun", "runc"}
	r, skipped, err := Detect(ctx, "", state)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range skipped {
		if s.Reason == "" || s.Name == r.Name {
			t.Errorf("inconsistent skipped entry %+v (picked %s)", s, r.Name)
		}
		t.Logf("skipped %s: %s", s.Name, s.Reason)
	}
	if want := len(skipped); Candidates[want] != r.Name {
		t.Errorf("picked %s after skipping %d candidates %v", r.Name, want, Candidates)
	}
	if r.StateRoot != filepath.Join(state, r.Name) {
		t.Errorf("state root %s", r.StateRoot)
	}

	// What Detect picked really runs a container.
	root := busyboxRootfs(t)
	var out bytes.Buffer
	if code, err := r.Run(ctx, bundle(t, Config{ID: "detected", Rootfs: root, Args: []string{"/bin/echo", "hi"}}), "detected", Stdio{Stdout: &out}); err != nil || code != 0 || out.String() != "hi\n" {
		t.Errorf("run with %s: code %d err %v out %q", r.Name, code, err, out.String())
	}
	assertNoState(t, r)

	// crun explicitly: works (cgroup v2 machines) or fails carrying crun's own reason.
	if _, err := exec.LookPath("crun"); err == nil {
		cr, sk, err := Detect(ctx, "crun", state)
		switch {
		case err == nil:
			if cr.Name != "crun" || len(sk) != 0 {
				t.Errorf("crun: %+v skipped %+v", cr, sk)
			}
		case len(sk) != 1 || sk[0].Name != "crun" || !strings.Contains(err.Error(), sk[0].Reason) || !errors.Is(err, ErrNoRuntime):
			t.Errorf("crun: err %v skipped %+v", err, sk)
		case hybridCgroups() && !strings.Contains(sk[0].Reason, "hybrid"):
			t.Errorf("crun on hybrid cgroups skipped for %q, want crun's hybrid-mode error", sk[0].Reason)
		}
	}

	// The verdicts are cached: a second Detect runs no probe.
	for _, n := range []string{"runc", "crun"} {
		if p, _ := exec.LookPath(n); p != "" {
			if _, err := os.Stat(filepath.Join(state, "probe-"+n+".json")); err != nil {
				t.Errorf("no cached verdict for %s: %v", n, err)
			}
		}
	}
	probes := probeCount.Load()
	r2, skipped2, err := Detect(ctx, "", state)
	if err != nil || r2 != r || len(skipped2) != len(skipped) {
		t.Errorf("second Detect: %+v %+v %v", r2, skipped2, err)
	}
	if n := probeCount.Load() - probes; n != 0 {
		t.Errorf("a cached Detect ran %d probes", n)
	}
	// A changed binary identity means a new probe: a corrupt cache entry
	// for runc is ignored, not trusted.
	if err := os.WriteFile(filepath.Join(state, "probe-runc.json"), []byte(`{"version":2,"path":"/usr/sbin/runc","size":1,"mtime_ns":1,"reason":"stale"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r3, _, err := Detect(ctx, "runc", state); err != nil || r3.Name != "runc" {
		t.Errorf("Detect after stale cache: %+v %v", r3, err)
	}

	_, sk, err := Detect(ctx, "nonexistent", state)
	if err == nil || !strings.Contains(err.Error(), "nonexistent") || !strings.Contains(err.Error(), "not found") || len(sk) != 1 {
		t.Errorf("want=nonexistent: %v %+v", err, sk)
	}
	if _, _, err := Detect(ctx, "", "relative"); err == nil {
		t.Error("relative state root accepted")
	}
	// The probes left nothing behind.
	for _, n := range []string{"runc", "crun"} {
		ents, _ := os.ReadDir(filepath.Join(state, n))
		for _, e := range ents {
			t.Errorf("%s state holds %s", n, e.Name())
		}
	}
}
