package mount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
)

// mountOptions returns the per-mount options of the topmost mount at dir,
// from /proc/self/mountinfo.
func mountOptions(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var opts string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == dir {
			opts = f[5]
		}
	}
	if opts == "" {
		t.Fatalf("%s is not in /proc/self/mountinfo", dir)
	}
	return strings.Split(opts, ",")
}

// hostileImage stores an image whose one layer ships a setuid-root copy of
// id(1) and a character device node for /dev/zero (1:5).
func hostileImage(t *testing.T, e *env, ref string) *Image {
	t.Helper()
	idBin, err := exec.LookPath("id")
	if err != nil {
		t.Skip("id(1) is not installed")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	dir := t.TempDir()
	src, err := os.Open(idBin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, "suid-id"), os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	if err := os.Chown(filepath.Join(dir, "suid-id"), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "suid-id"), 0o4755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dir, "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	if _, err := image.Create(context.Background(), e.s, ref, []string{dir}, image.CreateOptions{Format: layer.DefaultFormat(layer.Squashfs)}); err != nil {
		t.Fatal(err)
	}
	img, err := LocalImage(e.s, ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// runSetuidAsNobody executes path as uid/gid 65534 (through an inherited
// descriptor, so that the 0700 directories above it do not matter) and
// returns what `id -u` printed: 0 if the setuid bit took effect. A FUSE
// mount without allow_other refuses other users altogether: that returns
// "denied".
func runSetuidAsNobody(t *testing.T, path string) string {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/proc/self/fd/3", "-u")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil && strings.Contains(string(out), "Permission denied") {
		return "denied"
	}
	if err != nil {
		t.Fatalf("run %s as nobody: %v: %s", path, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestImageContentInertOnHost: a setuid file and a device node shipped in
// an image do nothing through a `vessel mount` target (read-only bind,
// read-only overlay, writable overlay) or a shared layer mount under the
// run directory, in userspace-verification and FUSE (rootless) mode; the
// run directory and its layer and container directories are 0700.
func TestImageContentInertOnHost(t *testing.T) {
	e := newEnv(t)
	img := hostileImage(t, e, "hostile:1")
	// Two layers, so that a read-only mount is an overlay rather than a bind.
	two := testImage(t, e.s, "two:1")
	modes := []Mode{ModeUserspace}
	if _, err := exec.LookPath("squashfuse"); err == nil {
		modes = append(modes, ModeFuse)
	} else {
		t.Log("squashfuse is not installed: FUSE mode not checked")
	}
	for _, mode := range modes {
		for _, opt := range []Options{{}, {Writable: true}} {
			name := fmt.Sprintf("%s writable=%v", mode, opt.Writable)
			t.Run(name, func(t *testing.T) {
				e.m.Mode = mode
				target := filepath.Join(t.TempDir(), "root")
				p, err := e.m.Mount(context.Background(), img, "h", target, Owner{}, opt)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					if err := e.m.Unmount("h"); err != nil {
						t.Error(err)
					}
				}()
				for _, dir := range []string{p.Target, p.Layers[0].Dir} {
					opts := strings.Join(mountOptions(t, dir), ",")
					for _, want := range []string{"nosuid", "nodev"} {
						if !strings.Contains(","+opts+",", ","+want+",") {
							t.Errorf("%s mounted %s, without %s", dir, opts, want)
						}
					}
					// The test means something: the bits are there.
					fi, err := os.Stat(filepath.Join(dir, "suid-id"))
					if err != nil || fi.Mode()&os.ModeSetuid == 0 {
						t.Fatalf("%s/suid-id: %v %v, want a setuid file", dir, fi, err)
					}
					var st unix.Stat_t
					if err := unix.Stat(filepath.Join(dir, "zero"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
						t.Fatalf("%s/zero is not a device node: %v", dir, err)
					}
					got := runSetuidAsNobody(t, filepath.Join(dir, "suid-id"))
					if want := "65534"; mode == ModeFuse && got == "denied" {
						// FUSE without allow_other: not even executable by others
					} else if got != want {
						t.Errorf("setuid-root file in the image ran as uid %s through %s, want %s", got, dir, want)
					}
					if f, err := os.Open(filepath.Join(dir, "zero")); !errors.Is(err, syscall.EACCES) {
						if f != nil {
							f.Close()
						}
						t.Errorf("open the image's device node through %s: %v, want EACCES", dir, err)
					}
				}
				dirs := []string{e.run, layersDir(e.run)}
				if opt.Writable {
					dirs = append(dirs, filepath.Dir(p.Upper), p.Upper)
				}
				for _, d := range dirs {
					if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
						t.Errorf("%s: %v %v, want 0700", d, fi.Mode(), err)
					}
				}
			})
		}
	}
	// A read-only two-layer mount (overlay without upper) is covered above
	// only with one layer (a bind): check the overlay too.
	e.m.Mode = ModeUserspace
	target := filepath.Join(t.TempDir(), "root")
	if _, err := e.m.Mount(context.Background(), two, "two", target, Owner{}, Options{}); err != nil {
		t.Fatal(err)
	}
	opts := strings.Join(mountOptions(t, target), ",")
	if !strings.Contains(opts, "nosuid") || !strings.Contains(opts, "nodev") {
		t.Errorf("read-only overlay mounted %s, without nosuid,nodev", opts)
	}
	if err := e.m.Unmount("two"); err != nil {
		t.Fatal(err)
	}
}
