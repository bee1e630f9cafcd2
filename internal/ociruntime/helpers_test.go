package ociruntime

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// busyboxApplets are linked into test root filesystems.
var busyboxApplets = []string{
	"sh", "true", "false", "id", "cat", "echo", "hostname", "ls", "sleep", "pwd",
	"env", "tty", "touch", "grep", "kill", "mkdir", "ip", "stty", "unshare",
}

// needRunc skips the test unless it runs as root with runc installed, and
// returns a Runtime with a private state root.
func needRunc(t testing.TB) Runtime {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containers with runc")
	}
	path, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not installed (scripts/deps.sh installs it)")
	}
	return Runtime{Name: "runc", Path: path, StateRoot: filepath.Join(t.TempDir(), "state")}
}

// busyboxRootfs makes a root filesystem with Debian's static busybox and
// returns its path.
func busyboxRootfs(t testing.TB) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (scripts/deps.sh installs busybox-static)")
	}
	if out, err := exec.Command("file", "-L", bb).Output(); err == nil && !containsStatic(string(out)) {
		t.Skipf("%s is not static (install busybox-static)", bb)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "dev", "sys", "home/app"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
	write(t, filepath.Join(root, "etc/group"), "root:x:0:\ntty:x:5:\napp:x:1000:\nextra:x:2000:app\n")
	return root
}

func containsStatic(s string) bool {
	return filepath.Base(s) != "" && (contains(s, "statically linked") || contains(s, "static-pie"))
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func write(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// bundle writes the spec for c into a fresh bundle directory.
func bundle(t testing.TB, c Config) string {
	t.Helper()
	s, err := Spec(c)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteBundle(dir, s); err != nil {
		t.Fatal(err)
	}
	return dir
}

// assertNoState fails when the runtime still lists containers or its
// state root holds anything.
func assertNoState(t testing.TB, r Runtime) {
	t.Helper()
	l, err := r.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 0 {
		t.Errorf("runtime still lists %+v", l)
	}
	ents, _ := os.ReadDir(r.StateRoot)
	for _, e := range ents {
		t.Errorf("state root holds %s", e.Name())
	}
}
