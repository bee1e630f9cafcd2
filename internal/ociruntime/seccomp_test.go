package ociruntime

import (
	"bytes"
	"context"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// denied reports whether the profile has an unconditional or arg-checked
// rule for syscall name.
func denied(p *specs.LinuxSeccomp, name string) bool {
	for _, s := range p.Syscalls {
		for _, n := range s.Names {
			if n == name && s.Action == specs.ActErrno {
				return true
			}
		}
	}
	return false
}

func TestSeccompProfile(t *testing.T) {
	root := t.TempDir()
	s, err := Spec(Config{ID: "sc", Rootfs: root, Args: []string{"/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	p := s.Linux.Seccomp
	if p == nil || p.DefaultAction != specs.ActAllow {
		t.Fatalf("default spec: seccomp %+v, want a default-allow filter", p)
	}
	for _, name := range []string{"keyctl", "add_key", "mount", "init_module", "bpf", "userfaultfd", "unshare", "clone3", "swapon"} {
		if !denied(p, name) {
			t.Errorf("default filter allows %s", name)
		}
	}
	for _, name := range []string{"read", "execve", "chown", "clone"} {
		for _, r := range p.Syscalls {
			for _, n := range r.Names {
				if n == name && len(r.Args) == 0 {
					t.Errorf("default filter denies %s outright", name)
				}
			}
		}
	}
	// Granting a capability lifts its rule; keyrings stay closed.
	s, err = Spec(Config{ID: "sc", Rootfs: root, Args: []string{"/bin/true"}, CapAdd: []string{"SYS_ADMIN", "SYS_MODULE"}})
	if err != nil {
		t.Fatal(err)
	}
	if denied(s.Linux.Seccomp, "mount") || denied(s.Linux.Seccomp, "unshare") || denied(s.Linux.Seccomp, "init_module") || !denied(s.Linux.Seccomp, "keyctl") {
		t.Errorf("with SYS_ADMIN and SYS_MODULE: %+v", s.Linux.Seccomp.Syscalls)
	}
	s, err = Spec(Config{ID: "sc", Rootfs: root, Args: []string{"/bin/true"}, Unconfined: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.Seccomp != nil {
		t.Error("Unconfined still has a seccomp filter")
	}
}

func TestSeccompInContainer(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	run := func(c Config) (int, string) {
		t.Helper()
		c.ID, c.Rootfs = "seccomp", root
		var out bytes.Buffer
		code, err := r.Run(context.Background(), bundle(t, c), c.ID, Stdio{Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatal(err)
		}
		return code, out.String()
	}
	status := []string{"/bin/sh", "-c", "grep '^Seccomp:' /proc/self/status"}
	if _, out := run(Config{Args: status}); !strings.Contains(out, "Seccomp:\t2") {
		t.Errorf("default: %q, want filter mode 2", out)
	}
	if _, out := run(Config{Args: status, Unconfined: true}); !strings.Contains(out, "Seccomp:\t0") {
		t.Errorf("unconfined: %q, want mode 0", out)
	}
	// A new user namespace needs no capability, so only the filter stops it.
	newUserNS := []string{"/bin/unshare", "-U", "/bin/true"}
	if code, out := run(Config{Args: newUserNS}); code == 0 || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("unshare -U under the filter: exit %d %q, want EPERM", code, out)
	}
	if code, out := run(Config{Args: newUserNS, Unconfined: true}); code != 0 {
		t.Errorf("unshare -U unconfined: exit %d %q", code, out)
	}
	if code, out := run(Config{Args: newUserNS, CapAdd: []string{"SYS_ADMIN"}}); code != 0 {
		t.Errorf("unshare -U with CAP_SYS_ADMIN: exit %d %q", code, out)
	}
	assertNoState(t, r)
}
