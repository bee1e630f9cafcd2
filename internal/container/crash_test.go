package container

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/faultpoint"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/store"
)

// TestMain doubles as the helper process of the crash tests: with
// VESSEL_TEST_HELPER=run it runs one container (sleep 1000) and exits.
func TestMain(m *testing.M) {
	if os.Getenv("VESSEL_TEST_HELPER") == "run" {
		if err := helperRun(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helperRun() error {
	ctx := context.Background()
	s, err := store.Open(os.Getenv("VESSEL_TEST_ROOT"))
	if err != nil {
		return err
	}
	img, err := mount.LocalImage(s, "bb:1")
	if err != nil {
		return err
	}
	run := os.Getenv("VESSEL_TEST_RUN")
	rt, _, err := ociruntime.Detect(ctx, os.Getenv("VESSEL_TEST_RUNTIME"), filepath.Join(run, "runtime"))
	if err != nil {
		return err
	}
	l := &Launcher{Mounts: &mount.Manager{Run: run}, Runtime: rt}
	_, err = l.Run(ctx, Spec{ID: os.Getenv("VESSEL_TEST_ID"), Image: img, Upper: os.Getenv("VESSEL_TEST_UPPER"),
		Config: ociruntime.Config{Args: []string{"/bin/sleep", "1000"}}}, ociruntime.Stdio{})
	return err
}

// slowRuntime is a runtime that waits a second before it does anything
// (as a loaded machine may): a vessel killed meanwhile leaves a runtime
// process that has not created its container yet.
func slowRuntime(t *testing.T) string {
	t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc is not installed")
	}
	dir := t.TempDir()
	p, fifo := filepath.Join(dir, "slowrunc"), filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// bash's read times out without a child process: the runtime is one
	// process, as runc is before it forks.
	script := "#!/bin/bash\ncase \" $* \" in *\" run \"*) exec 3<>" + fifo + "; read -t 1 -u 3;; esac\nexec " + runc + " \"$@\"\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// killAt runs a vessel (this binary as a helper) that runs container id
// and kills it with SIGKILL at point ("" = once the container runs).
func (e *env) killAt(t *testing.T, point, runtime, id, upper string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "paused")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "VESSEL_TEST_HELPER=run", "VESSEL_TEST_ROOT="+e.root, "VESSEL_TEST_RUN="+e.run,
		"VESSEL_TEST_RUNTIME="+runtime, "VESSEL_TEST_ID="+id, "VESSEL_TEST_UPPER="+upper,
		"VESSEL_FAULT_PAUSE="+point, "VESSEL_FAULT_FILE="+file)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	there := func() bool {
		if point != "" {
			_, err := os.Stat(file)
			return err == nil
		}
		states, _ := e.rt.List(context.Background())
		return slices.ContainsFunc(states, func(s ociruntime.State) bool { return s.ID == id && s.Status == "running" })
	}
	deadline := time.After(60 * time.Second)
	for !there() {
		select {
		case err := <-exited:
			t.Fatalf("the vessel exited before the kill: %v", err)
		case <-deadline:
			cmd.Process.Kill()
			<-exited
			t.Fatal("the vessel did not get there within 60s")
		case <-time.After(5 * time.Millisecond):
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// A vessel killed with SIGKILL at any moment of a container's life leaves
// things behind; Recover (what vessel down and vessel up run) and a new
// run remove all of them, and nothing the dead vessel started comes back
// afterwards.
func TestKilledVesselLeavesNothingAfterRecovery(t *testing.T) {
	slow := slowRuntime(t)
	for _, tc := range []struct {
		name, point string
		slow, kept  bool
	}{
		{"created", faultpoint.ContainerCreated, false, false},
		{"runtime-started", faultpoint.RuntimeStarted, true, false},
		{"running", "", false, false},
		{"running-kept-upper", "", false, true},
		{"runtime-started-kept-upper", faultpoint.RuntimeStarted, true, true},
	} {
		for _, by := range []string{"recover", "new-run"} {
			t.Run(tc.name+"/"+by, func(t *testing.T) {
				e := newEnv(t)
				runtime := ""
				if tc.slow {
					runtime = slow
					var err error
					if e.rt, _, err = ociruntime.Detect(context.Background(), slow, filepath.Join(e.run, "runtime")); err != nil {
						t.Fatal(err)
					}
				}
				upper := ""
				if tc.kept {
					upper = filepath.Join(t.TempDir(), "upper")
				}
				e.killAt(t, tc.point, runtime, "victim", upper)
				if len(Leftovers(e.run)) == 0 {
					t.Fatal("the kill left nothing behind: the test does not test anything")
				}
				switch by {
				case "recover":
					removed, err := e.launcher().Recover(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					if !slices.ContainsFunc(removed, func(s string) bool { return strings.HasPrefix(s, "bundle ") }) {
						t.Errorf("Recover removed %q: no bundle", removed)
					}
				case "new-run":
					code, err := e.launcher().Run(context.Background(), Spec{ID: "next", Image: e.img, Config: ociruntime.Config{Args: []string{"/bin/true"}}}, ociruntime.Stdio{})
					if err != nil || code != 0 {
						t.Fatalf("next run: %d %v", code, err)
					}
				}
				for _, l := range Leftovers(e.run) {
					t.Errorf("right after recovery: %s", l)
				}
				// A runtime the dead vessel started must not create its
				// container after recovery looked (the slow one waits 1s).
				time.Sleep(1500 * time.Millisecond)
				if tc.kept {
					if _, err := os.Stat(filepath.Join(upper, "upper")); err != nil {
						t.Errorf("the kept upper is gone: %v", err)
					}
				}
			})
		}
	}
}
