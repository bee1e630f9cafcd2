package ociruntime

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitRunning waits until the runtime lists id as running.
func waitRunning(t testing.TB, r Runtime, id string) State {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		l, err := r.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range l {
			if s.ID == id && s.Status == "running" {
				return s
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("container %s never ran", id)
	return State{}
}

func TestRunExitCodes(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 3", 3},
		// The container's init cannot be SIGKILLed from inside its own
		// pid namespace, so a child dies and the shell passes it on.
		{`sh -c 'kill -9 $$'; exit $?`, 137},
	} {
		b := bundle(t, Config{ID: "exit", Rootfs: root, Args: []string{"/bin/sh", "-c", tc.script}})
		code, err := r.Run(context.Background(), b, "exit", Stdio{})
		if err != nil {
			t.Fatalf("%q: %v", tc.script, err)
		}
		if code != tc.want {
			t.Errorf("%q: exit code %d, want %d", tc.script, code, tc.want)
		}
	}
	assertNoState(t, r)
}

// TestRunSignalDeath: init killed by a signal from outside gives 128+N.
func TestRunSignalDeath(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	b := bundle(t, Config{ID: "sigdeath", Rootfs: root, Args: []string{"/bin/sleep", "60"}})
	done := make(chan int, 1)
	go func() {
		code, err := r.Run(context.Background(), b, "sigdeath", Stdio{})
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	waitRunning(t, r, "sigdeath")
	// A second container with the same id is refused and the first one
	// is left alone.
	var re *Error
	if _, err := r.Run(context.Background(), b, "sigdeath", Stdio{}); !errors.As(err, &re) || !strings.Contains(re.Msg, "exists") {
		t.Errorf("second Run with the same id: %v", err)
	}
	waitRunning(t, r, "sigdeath")
	if err := r.Kill(context.Background(), "sigdeath", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 137 {
		t.Errorf("exit code %d, want 137", code)
	}
	assertNoState(t, r)
}

func TestRunStdio(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	b := bundle(t, Config{ID: "stdio", Rootfs: root, Args: []string{"/bin/sh", "-c", "cat; echo out; echo err >&2"}})
	var out, errb bytes.Buffer
	code, err := r.Run(context.Background(), b, "stdio", Stdio{Stdin: strings.NewReader("in\n"), Stdout: &out, Stderr: &errb})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v stderr %q", code, err, errb.String())
	}
	if out.String() != "in\nout\n" || errb.String() != "err\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errb.String())
	}
	assertNoState(t, r)
}

func TestRunRuntimeError(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	b := bundle(t, Config{ID: "noexec", Rootfs: root, Args: []string{"/nonexistent"}})
	var errb bytes.Buffer
	code, err := r.Run(context.Background(), b, "noexec", Stdio{Stderr: &errb})
	var re *Error
	if !errors.As(err, &re) {
		t.Fatalf("code %d err %v: want *Error", code, err)
	}
	if !strings.Contains(re.Msg, "/nonexistent") {
		t.Errorf("error %q does not name the missing binary", re.Msg)
	}
	assertNoState(t, r)
}
