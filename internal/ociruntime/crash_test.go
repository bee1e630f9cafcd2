package ociruntime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/faultpoint"
)

// TestMain doubles as the helper process of the crash tests: with
// VESSEL_TEST_HELPER=detect it runs Detect and exits.
func TestMain(m *testing.M) {
	if os.Getenv("VESSEL_TEST_HELPER") == "detect" {
		_, _, err := Detect(context.Background(), os.Getenv("VESSEL_TEST_WANT"), os.Getenv("VESSEL_TEST_STATE"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startPaused runs this test binary as a helper that pauses at point, and
// returns it once it is there.
func startPaused(t *testing.T, point string, env ...string) *exec.Cmd {
	t.Helper()
	file := filepath.Join(t.TempDir(), "paused")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, "VESSEL_FAULT_PAUSE="+point, "VESSEL_FAULT_FILE="+file)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for {
		if _, err := os.Stat(file); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("helper exited before reaching %s: %v", point, err)
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("helper did not reach %s in 60s", point)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	return cmd
}

// processesIn lists the processes whose working directory or root is dir
// or below it.
func processesIn(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if strings.Trim(e.Name(), "0123456789") != "" {
			continue
		}
		for _, l := range []string{"cwd", "root"} {
			p, err := os.Readlink(filepath.Join("/proc", e.Name(), l))
			if err == nil && (p == dir || strings.HasPrefix(p, dir+"/")) {
				cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				out = append(out, fmt.Sprintf("pid %s (%s) has its %s in %s", e.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "), l, p))
			}
		}
	}
	return out
}

// A vessel killed with SIGKILL while its runtime probe container exists
// leaves the container and its bundle; the next Detect removes both.
func TestDetectRemovesTheProbeOfAKilledVessel(t *testing.T) {
	r := needRunc(t)
	state := filepath.Dir(r.StateRoot)
	helper := startPaused(t, faultpoint.ProbeCreated, "VESSEL_TEST_HELPER=detect", "VESSEL_TEST_WANT=runc", "VESSEL_TEST_STATE="+state)
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	rt := Runtime{Name: "runc", Path: r.Path, StateRoot: filepath.Join(state, "runc")}
	// The window is real: the probe container and its bundle are there.
	if l, err := rt.List(context.Background()); err != nil || len(l) != 1 || !strings.HasPrefix(l[0].ID, ProbePrefix) {
		t.Fatalf("after the kill the runtime lists %+v (%v), want the probe container", l, err)
	}
	if ents, _ := os.ReadDir(probesDir(state)); len(ents) != 1 {
		t.Fatalf("%d probe bundles after the kill, want 1", len(ents))
	}
	if _, _, err := Detect(context.Background(), "runc", state); err != nil {
		t.Fatal(err)
	}
	assertNoState(t, rt)
	if ents, _ := os.ReadDir(probesDir(state)); len(ents) != 0 {
		t.Errorf("%d probe bundles left", len(ents))
	}
	for _, p := range processesIn(state) {
		t.Errorf("process left: %s", p)
	}
}
