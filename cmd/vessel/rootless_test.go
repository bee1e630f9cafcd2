package main

import (
	"bytes"
	"fmt"
	"github.com/vesselos/vessel/internal/container"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/userns/usernstest"
)

// TestRootlessRun runs vessel as a throwaway unprivileged user with
// subordinate ids: an image built as root runs rootless (squashfuse layers
// verified in userspace, overlay with userxattr, runc in the user
// namespace), ids map as podman maps them, an opaque directory of a lower
// layer is honoured, a tampered layer is refused, and nothing is left
// mounted or running.
func TestRootlessRun(t *testing.T) {
	for _, tool := range []string{"squashfuse", "mksquashfs", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("busybox is not installed (package busybox-static)")
	}
	u := usernstest.NewUser(t) // skips unless root with useradd, newuidmap and user namespaces

	// Everything the user must reach lives under a directory it can
	// enter; t.TempDir is 0700 root.
	tmp := t.TempDir()
	for d := tmp; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()) {
			os.Chmod(d, 0o755)
		}
	}
	bin := filepath.Join(tmp, "bin", "vessel")
	copyExe(t, bin) // this test binary runs as vessel when called so (see TestMain)

	base, top := filepath.Join(tmp, "base"), filepath.Join(tmp, "top")
	writeTree(t, base, map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/:/bin/sh\n",
		"etc/group":      "root:x:0:\n",
		"etc/motd":       "base\n",
		"owned":          "hello\n",
		"data/old/f":     "old\n",
		"data/gone":      "gone\n",
		"bin/busybox":    "", // replaced below
		"root/.keep":     "",
		"tmp/.keep":      "",
		"etc/hostname":   "x\n",
		"etc/.base-only": "",
	})
	copyFile(t, busybox, filepath.Join(base, "bin/busybox"), 0o755)
	for _, c := range []string{"sh", "id", "ls", "cat", "stat", "echo", "true", "touch"} {
		must(t, os.Symlink("busybox", filepath.Join(base, "bin", c)))
	}
	must(t, os.Lchown(filepath.Join(base, "owned"), 1000, 1000))
	writeTree(t, top, map[string]string{"etc/motd": "top\n", "data/n": "new\n"})
	// A root build marks opaque directories with trusted.overlay.opaque.
	must(t, unix.Lsetxattr(filepath.Join(top, "data"), "trusted.overlay.opaque", []byte("y"), 0))
	// And deletions with whiteouts (character device 0:0).
	must(t, unix.Mknod(filepath.Join(top, "etc", ".base-only"), unix.S_IFCHR|0o600, 0))

	store := filepath.Join(tmp, "store")
	t.Setenv("VESSEL_ROOT", store)
	t.Setenv("VESSEL_RUN", filepath.Join(tmp, "rootrun"))
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if code := run([]string{"image", "create", "rl:1", "--layer", base, "--layer", top}); code != 0 {
		t.Fatalf("image create as root: exit %d", code)
	}
	u.Chown(t, store)

	xdg := filepath.Join(tmp, "xdg")
	must(t, os.Mkdir(xdg, 0o700))
	u.Chown(t, xdg)
	env := []string{"VESSEL_ROOT=" + store, "XDG_RUNTIME_DIR=" + xdg}
	vessel := func(env []string, args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := u.Command(env, append([]string{bin}, args...)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code = cmd.ProcessState.ExitCode()
		if err != nil && code <= 0 {
			t.Fatalf("vessel %v: %v", args, err)
		}
		return o.String(), e.String(), code
	}
	noLeftovers := func(what string) {
		t.Helper()
		if pids := u.Pids(); len(pids) > 0 {
			t.Errorf("%s: processes of the user still run: %v", what, describe(pids))
		}
		if m := mountsUnder(tmp); len(m) > 0 {
			t.Errorf("%s: mounts left under %s: %v", what, tmp, m)
		}
	}

	out, errOut, code := vessel(env, "run", "rl:1", "sh", "-c",
		`id -u; id -g; stat -c %u:%g /owned; cat /owned; ls /data; cat /etc/motd; [ -e /etc/.base-only ] || echo whited-out; touch /owned && echo written`)
	if code != 0 {
		t.Fatalf("rootless run: exit %d\n%s%s", code, out, errOut)
	}
	want := "0\n0\n1000:1000\nhello\nn\ntop\nwhited-out\nwritten\n"
	if out != want {
		t.Fatalf("rootless run printed\n%s\nwant (uid 0 inside, 1000 stays 1000, data/ opaque, top layer wins, whiteout hides)\n%s\nstderr: %s", out, want, errOut)
	}
	t.Logf("rootless run as %s (subordinate ids %d-%d):\n%s", u.Name, u.SubStart, u.SubStart+u.SubCount-1, out)
	noLeftovers("after a run")

	// As another user in the container, through the mapped range.
	out, errOut, code = vessel(env, "run", "--user", "1000", "rl:1", "sh", "-c", "id -u; cat /owned")
	if code != 0 || out != "1000\nhello\n" {
		t.Fatalf("run --user 1000: exit %d, %q %s", code, out, errOut)
	}

	// Exit codes pass through both processes.
	if _, errOut, code = vessel(env, "run", "rl:1", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit 7 came back as %d: %s", code, errOut)
	}

	// Per-namespace run state stays in the namespace; the verification
	// cache is shared.
	run := filepath.Join(xdg, "vessel")
	for _, l := range container.Leftovers(run) {
		t.Errorf("outside the namespace: %s", l)
	}
	if fi, err := os.Stat(run); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("rootless run directory %s: %v %v, want 0700", run, fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(filepath.Join(run, "verified")); len(ents) != 2 {
		t.Errorf("verification cache has %d records, want 2", len(ents))
	}

	// vessel mount needs vessel unshare rootless, and works there.
	if _, errOut, code = vessel(env, "mount", "rl:1", filepath.Join(tmp, "m")); code == 0 || !strings.Contains(errOut, "vessel unshare") {
		t.Errorf("rootless mount outside unshare: exit %d, %s", code, errOut)
	}
	mnt := filepath.Join(xdg, "m")
	out, errOut, code = vessel(env, "unshare", "sh", "-c",
		fmt.Sprintf("%[1]s mount rl:1 %[2]s && findmnt -n -o OPTIONS %[2]s && findmnt -rn -o TARGET,FSTYPE,OPTIONS | grep '/vessel/layers/[0-9a-f]* fuse' | sort -u && ls %[2]s/data && cat %[2]s/etc/motd && %[1]s umount %[2]s", bin, mnt))
	if code != 0 || !strings.Contains(out, "fuse") || !strings.HasSuffix(out, "n\ntop\n") {
		t.Errorf("vessel unshare + mount: exit %d\n%s%s", code, out, errOut)
	}
	// The overlay and the two squashfuse layer mounts are nosuid,nodev
	// rootless too (an options line each, then the listing).
	lines := strings.Split(out, "\n")
	if len(lines) < 4 || !strings.Contains(lines[2], "fuse") || !strings.Contains(lines[3], "fuse") {
		t.Errorf("want the overlay's options and two fuse layer mounts after the first line:\n%s", out)
	} else {
		for _, line := range lines[1:4] {
			if !strings.Contains(line, "nosuid") || !strings.Contains(line, "nodev") {
				t.Errorf("rootless mount options %q lack nosuid,nodev", line)
			}
		}
	}
	t.Logf("vessel unshare + mount:\n%s", out)
	noLeftovers("after unshare")

	// A tampered layer is refused rootless too, whatever the cache says.
	blob := largestBlob(t, store)
	f, err := os.OpenFile(blob, os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt([]byte{0xff}, 100)
	must(t, err)
	must(t, f.Close())
	out, errOut, code = vessel(env, "run", "rl:1", "cat", "/etc/motd")
	if code == 0 || !strings.Contains(errOut, "layer failed verification") || out != "" {
		t.Errorf("tampered layer: exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	t.Logf("tampered layer: %s", errOut)
	noLeftovers("after a refused layer")

	// Without a runtime directory (as after su), state goes to
	// /tmp/vessel-run-UID, with a note.
	fallback := fmt.Sprintf("/tmp/vessel-run-%d", u.UID)
	t.Cleanup(func() { os.RemoveAll(fallback) })
	_, errOut, _ = vessel([]string{"VESSEL_ROOT=" + store}, "run", "rl:1", "true")
	if !strings.Contains(errOut, fallback) {
		t.Errorf("no note about %s: %s", fallback, errOut)
	}
	if fi, err := os.Stat(fallback); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("fallback run directory: %v %v", fi, err)
	}

	// Without subordinate ids the error says how to fix it.
	r := fmt.Sprintf("%d-%d", u.SubStart, u.SubStart+u.SubCount-1)
	if b, err := exec.Command("usermod", "--del-subuids", r, "--del-subgids", r, u.Name).CombinedOutput(); err != nil {
		t.Fatalf("usermod: %v: %s", err, b)
	}
	_, errOut, code = vessel(env, "run", "rl:1", "true")
	if code == 0 || !strings.Contains(errOut, "no subordinate ids") || !strings.Contains(errOut, "usermod --add-subuids") {
		t.Errorf("no subordinate ids: exit %d, %s", code, errOut)
	}
	noLeftovers("at the end")
}

func copyExe(t *testing.T, dst string) {
	t.Helper()
	exe, err := os.Executable()
	must(t, err)
	must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	copyFile(t, exe, dst, 0o755)
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	must(t, err)
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	must(t, err)
	_, err = io.Copy(out, in)
	must(t, err)
	must(t, out.Close())
	must(t, os.Chmod(dst, mode))
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), 0o644))
	}
}

func largestBlob(t *testing.T, store string) string {
	t.Helper()
	var best string
	var size int64
	filepath.Walk(filepath.Join(store, "oci", "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > size {
			best, size = p, fi.Size()
		}
		return nil
	})
	if best == "" {
		t.Fatal("no blobs in the store")
	}
	return best
}

// mountsUnder lists mount points under dir seen by any process.
func mountsUnder(dir string) []string {
	seen := map[string]bool{}
	files, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if fs := strings.Fields(line); len(fs) > 4 && strings.HasPrefix(fs[4], dir) {
				seen[fs[4]+" ("+f+")"] = true
			}
		}
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	return out
}

func describe(pids []int) []string {
	var out []string
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		out = append(out, fmt.Sprintf("%d %s", p, strings.ReplaceAll(string(b), "\x00", " ")))
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
