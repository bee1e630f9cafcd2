package mount

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/layer"
)

func needSquashfuse(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("squashfuse"); err != nil {
		t.Skip("squashfuse is not installed (make deps installs it)")
	}
}

// driversFor lists the running processes whose command line names a file
// under root (FUSE drivers serving the store's blobs).
func driversFor(root string) []string {
	var out []string
	files, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if cmd := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(cmd, root) && !strings.Contains(cmd, ".test") {
			out = append(out, cmd)
		}
	}
	return out
}

// TestFuseMode mounts through squashfuse and overlay userxattr, as a
// rootless vessel does in its user namespace (the rootless end-to-end test
// is cmd/vessel's TestRootlessRun); as root in the initial namespace the
// same plan works, which lets this test check it without a throwaway user.
func TestFuseMode(t *testing.T) {
	needSquashfuse(t)
	e := newEnv(t)
	e.m.Mode = ModeFuse
	img := testImage(t, e.s, "fuse:1")
	target := filepath.Join(t.TempDir(), "root")
	p, err := e.m.Mount(context.Background(), img, "f1", target, Self(), Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Overlay.Options, ","), "userxattr") {
		t.Errorf("overlay options %v lack userxattr", p.Overlay.Options)
	}
	for _, l := range p.Layers {
		if l.Mount.Type != "fuse.squashfuse" || l.Mount.Source != l.Blob || !l.VerifyInUserspace {
			t.Errorf("layer mount %+v: want squashfuse of the blob, verified in userspace", l.Mount)
		}
	}
	if got := read(t, filepath.Join(target, "data/a")); got != "top\n" {
		t.Errorf("data/a = %q, want the top layer's", got)
	}
	if got := read(t, filepath.Join(target, "etc/os")); got != "vessel-test\n" {
		t.Errorf("etc/os = %q", got)
	}
	if n := len(driversFor(e.s.Root())); n != 2 {
		t.Errorf("%d squashfuse processes, want one per layer", n)
	}
	if st := e.m.Stats(); st.Verified != 2 {
		t.Errorf("verified %d layers, want 2", st.Verified)
	}
	if err := e.m.Unmount("f1"); err != nil {
		t.Fatal(err)
	}
	// Unmounting ends the drivers (and this process reaps them).
	deadline := time.Now().Add(5 * time.Second)
	for len(driversFor(e.s.Root())) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if d := driversFor(e.s.Root()); len(d) > 0 {
		t.Errorf("squashfuse still runs after unmount: %v", d)
	}
}

func TestFuseErrors(t *testing.T) {
	needSquashfuse(t)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a filesystem"), 0o644)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	f, err := os.Open(junk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = mountFuse(LayerMount{Blob: junk, Dir: mnt, Mount: Mount{Type: "fuse.squashfuse", Source: junk, Target: mnt}}, f)
	if err == nil || !strings.Contains(err.Error(), "squashfuse "+junk) {
		t.Errorf("junk blob: err = %v", err)
	}
	t.Setenv("PATH", dir)
	err = mountFuse(LayerMount{Blob: junk, Dir: mnt, Mount: Mount{Type: "fuse." + fuseDriver(layer.Erofs)}}, f)
	if err == nil || !strings.Contains(err.Error(), "erofsfuse") || !strings.Contains(err.Error(), "squashfs layers") {
		t.Errorf("erofs without erofsfuse: err = %v", err)
	}
}

// The driver must serve the file that was verified (the open blob), even if
// the path names another file by the time it starts.
func TestFuseMountsTheVerifiedFile(t *testing.T) {
	needSquashfuse(t)
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs is not installed")
	}
	dir := t.TempDir()
	images := map[string]string{}
	for _, name := range []string{"verified", "swapped"} {
		src := filepath.Join(dir, name+"-src")
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, "who"), []byte(name), 0o644)
		images[name] = filepath.Join(dir, name+".sqfs")
		if out, err := exec.Command("mksquashfs", src, images[name], "-quiet", "-noappend").CombinedOutput(); err != nil {
			t.Fatalf("mksquashfs: %v: %s", err, out)
		}
	}
	f, err := os.Open(images["verified"])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	lm := LayerMount{Blob: images["swapped"], Dir: mnt, Mount: Mount{Type: "fuse.squashfuse", Source: images["swapped"], Target: mnt}}
	if err := mountFuse(lm, f); err != nil {
		t.Fatal(err)
	}
	defer unmount(mnt)
	if got := read(t, filepath.Join(mnt, "who")); got != "verified" {
		t.Errorf("the driver serves %q, want the verified file", got)
	}
}
