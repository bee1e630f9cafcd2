package mount

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/verity"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting layers needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs is not installed (make deps installs it)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices on this machine")
	}
}

// testImage creates an image with two layers: base has /etc/os and
// /data/a; top changes /data/a and adds /bin/hello.
func testImage(t testing.TB, s *store.Store, ref string) *Image {
	t.Helper()
	base, top := t.TempDir(), t.TempDir()
	for dir, files := range map[string]map[string]string{
		base: {"etc/os": "vessel-test\n", "data/a": "base\n", "data/keep": "keep\n"},
		top:  {"data/a": "top\n", "bin/hello": "hello " + ref + "\n"},
	} {
		for name, content := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Incompressible data so that the top layer spans several blocks.
	noise := make([]byte, 48<<10)
	rand.New(rand.NewSource(1)).Read(noise)
	if err := os.WriteFile(filepath.Join(top, "data/noise"), noise, 0o644); err != nil {
		t.Fatal(err)
	}
	epoch := int64(1700000000)
	if _, err := image.Create(context.Background(), s, ref, []string{base, top}, image.CreateOptions{Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	img, err := LocalImage(s, ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

type env struct {
	s   *store.Store
	m   *Manager
	run string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	needRoot(t)
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	m := &Manager{Run: run, Mode: ModeUserspace}
	t.Cleanup(func() {
		plans, _, _ := m.Mounted()
		for _, p := range plans {
			if err := m.Unmount(p.ID); err != nil {
				t.Errorf("unmount %s: %v", p.ID, err)
			}
		}
		if _, err := m.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		assertNoLeaks(t, run, s)
	})
	return &env{s: s, m: m, run: run}
}

// assertNoLeaks fails if any mount under run or any loop device backed by
// a blob of s remains.
func assertNoLeaks(t *testing.T, run string, s *store.Store) {
	t.Helper()
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], run) {
			t.Errorf("mount left behind: %s", line)
		}
	}
	for _, l := range WaitLoopsGone(s.Root(), 2*time.Second) {
		t.Errorf("loop device left behind: %s", l)
	}
	if rs, _ := os.ReadDir(mountsDir(run)); len(rs) != 0 {
		t.Errorf("%d mount records left behind", len(rs))
	}
	if ls, _ := os.ReadDir(layersDir(run)); len(ls) != 0 {
		t.Errorf("%d layer directories left behind", len(ls))
	}
	if rs, _ := os.ReadDir(refsDir(run)); len(rs) != 0 {
		t.Errorf("%d layer references left behind", len(rs))
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMountWritableAndFresh(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "app:1")
	target := filepath.Join(e.run, "containers", "c1", "rootfs")
	for round := 0; round < 2; round++ {
		p, err := e.m.Mount(context.Background(), img, "c1", target, Self(), Options{Writable: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := read(t, filepath.Join(target, "data/a")); got != "top\n" {
			t.Errorf("upper layer must win: /data/a = %q", got)
		}
		if got := read(t, filepath.Join(target, "etc/os")); got != "vessel-test\n" {
			t.Errorf("/etc/os = %q", got)
		}
		// A write from the previous round must be gone: fresh upper each time.
		if _, err := os.Stat(filepath.Join(target, "scratch")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("round %d: a file written before the remount survived (err %v)", round, err)
		}
		if err := os.WriteFile(filepath.Join(target, "scratch"), []byte("x"), 0o644); err != nil {
			t.Fatalf("writable root refused a write: %v", err)
		}
		// A fresh upper is on tmpfs even when the run directory is not.
		if !isTmpfs(p.Upper) {
			t.Errorf("fresh upper %s is not on tmpfs", p.Upper)
		}
		if err := os.Remove(filepath.Join(target, "data/keep")); err != nil {
			t.Fatal(err)
		}
		// The blob is untouched: a deletion is a whiteout in the upper dir.
		if _, err := os.Lstat(filepath.Join(p.Upper, "upper/data/keep")); err != nil {
			t.Errorf("no whiteout for the deleted file: %v", err)
		}
		if !isMountPoint(p.Layers[0].Dir) {
			t.Errorf("layer mount %s missing", p.Layers[0].Dir)
		}
		if err := e.m.Unmount("c1"); err != nil {
			t.Fatal(err)
		}
		if isMountPoint(target) || isMountPoint(p.Layers[0].Dir) {
			t.Error("still mounted after Unmount")
		}
		if _, err := os.Stat(p.Upper); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("own upper dir %s not removed", p.Upper)
		}
		if isMountPoint(filepath.Dir(p.Upper)) {
			t.Errorf("the tmpfs of fresh uppers is still mounted after the last unmount")
		}
	}
	st := e.m.Stats()
	if st.Verified != 2 || st.CacheHits != 2 {
		t.Errorf("verification: %+v, want 2 layers verified once and 2 cache hits", st)
	}
	if err := e.m.Unmount("c1"); !errors.Is(err, ErrNotMounted) {
		t.Errorf("second Unmount: %v, want ErrNotMounted", err)
	}
}

func TestMountReadOnly(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "ro:1")
	target := filepath.Join(t.TempDir(), "m")
	if _, err := e.m.Mount(context.Background(), img, "ro", target, Owner{}, Options{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err == nil {
		t.Error("read-only mount accepted a write")
	}
	if _, err := e.m.Mount(context.Background(), img, "ro2", target, Owner{}, Options{}); !errors.Is(err, ErrMounted) {
		t.Errorf("second mount on the same target: %v, want ErrMounted", err)
	}
	if _, err := e.m.Mount(context.Background(), img, "ro", t.TempDir(), Owner{}, Options{}); !errors.Is(err, ErrMounted) {
		t.Errorf("second mount with the same id: %v, want ErrMounted", err)
	}
	if err := e.m.UnmountTarget(target); err != nil {
		t.Fatal(err)
	}
	if err := e.m.UnmountTarget(target); !errors.Is(err, ErrNotMounted) {
		t.Errorf("UnmountTarget twice: %v", err)
	}
}

func TestSharedLayers(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "shared:1")
	var ids []string
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("c%d", i)
		if _, err := e.m.Mount(context.Background(), img, id, filepath.Join(e.run, "containers", id, "rootfs"), Self(), Options{Writable: true}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	st := e.m.Stats()
	if st.LayersMounted != 2 || st.LayersShared != 8 {
		t.Errorf("5 containers of a 2-layer image: %+v, want 2 layer mounts shared 8 times", st)
	}
	top := filepath.Join(layersDir(e.run), img.layers[1].hex())
	for i, id := range ids {
		if err := e.m.Unmount(id); err != nil {
			t.Fatal(err)
		}
		if last := i == len(ids)-1; isMountPoint(top) == last {
			t.Errorf("after unmounting %d of %d: layer mounted = %v", i+1, len(ids), !last)
		}
	}
}

func TestTamperedLayerRefused(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "bad:1")
	// Flip a byte in the middle of the top layer's filesystem image.
	blob := img.layers[1].blob
	f, err := os.OpenFile(blob, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(100)
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0xff
	f.WriteAt(b, off)
	f.Close()
	target := filepath.Join(t.TempDir(), "m")
	_, err = e.m.Mount(context.Background(), img, "bad", target, Self(), Options{Writable: true})
	var ce *verity.CorruptionError
	if !errors.Is(err, ErrVerify) || !errors.As(err, &ce) || ce.Block != 0 {
		t.Fatalf("tampered layer: %v, want ErrVerify naming data block 0", err)
	}
	for _, want := range []string{"bad:1", "layer 2 of 2", img.layers[1].digest.String(), "data block 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if isMountPoint(target) {
		t.Error("target mounted after a failed verification")
	}
	// Restoring the byte makes it mount again (the failure was not cached).
	f, _ = os.OpenFile(blob, os.O_RDWR, 0)
	b[0] ^= 0xff
	f.WriteAt(b, off)
	f.Close()
	if _, err := e.m.Mount(context.Background(), img, "bad", target, Self(), Options{Writable: true}); err != nil {
		t.Fatalf("after repair: %v", err)
	}
	if err := e.m.Unmount("bad"); err != nil {
		t.Fatal(err)
	}
}

func TestVerifiedCacheFollowsFileIdentity(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "cache:1")
	mountOnce := func() {
		t.Helper()
		if _, err := e.m.Mount(context.Background(), img, "c", filepath.Join(e.run, "c"), Self(), Options{}); err != nil {
			t.Fatal(err)
		}
		if err := e.m.Unmount("c"); err != nil {
			t.Fatal(err)
		}
	}
	mountOnce()
	mountOnce()
	if st := e.m.Stats(); st.Verified != 2 || st.CacheHits != 2 {
		t.Fatalf("%+v: want 2 verified then 2 cache hits", st)
	}
	// Changing the file (even back to the same bytes) changes its ctime,
	// so the layer is verified again.
	time.Sleep(10 * time.Millisecond)
	b := read(t, img.layers[0].blob)
	if err := os.WriteFile(img.layers[0].blob, []byte(b), 0o444); err != nil {
		t.Fatal(err)
	}
	mountOnce()
	if st := e.m.Stats(); st.Verified != 3 || st.CacheHits != 3 {
		t.Errorf("%+v: want the rewritten layer verified again and the other one cached", st)
	}
	// A corrupt cache record is ignored, not trusted.
	recs, _ := filepath.Glob(filepath.Join(verifiedDir(e.run), "*.json"))
	for _, r := range recs {
		os.WriteFile(r, []byte("{not json"), 0o600)
	}
	mountOnce()
	if st := e.m.Stats(); st.Verified != 5 {
		t.Errorf("%+v: corrupt records must mean verifying again", st)
	}
}

func TestCleanupAfterCrash(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "crash:1")
	// A "crashed" owner: a process that has exited.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := Owner{Pid: cmd.Process.Pid, StartTime: 1}
	if _, err := e.m.Mount(context.Background(), img, "dead", filepath.Join(e.run, "containers", "dead", "rootfs"), dead, Options{Writable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Mount(context.Background(), img, "live", filepath.Join(e.run, "containers", "live", "rootfs"), Self(), Options{Writable: true}); err != nil {
		t.Fatal(err)
	}
	// And a stray reference with no record at all.
	os.WriteFile(filepath.Join(refsDir(e.run), img.layers[0].hex()+".ghost"), nil, 0o600)
	done, err := e.m.Cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 1 || !strings.Contains(done[0], "dead") {
		t.Errorf("cleanup removed %q, want only the dead owner's mount", done)
	}
	plans, _, _ := e.m.Mounted()
	if len(plans) != 1 || plans[0].ID != "live" {
		t.Errorf("after cleanup: %d mounts", len(plans))
	}
	refs, _ := filepath.Glob(filepath.Join(refsDir(e.run), img.layers[0].hex()+".*"))
	if len(refs) != 1 {
		t.Errorf("%d references on the base layer, want only the live one", len(refs))
	}
	if err := e.m.Unmount("live"); err != nil {
		t.Fatal(err)
	}
}

func TestVerityTableMatchesVeritysetup(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("veritysetup"); err != nil {
		t.Skip("veritysetup is not installed (make deps installs it)")
	}
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := testImage(t, s, "vt:1")
	l := img.layers[0]
	v := newVerity(l)
	out, err := exec.Command("veritysetup", "dump", "--hash-offset", fmt.Sprint(l.geometry.DataSize), l.blob).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup dump: %v\n%s", err, out)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, val, ok := strings.Cut(line, ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(val)
		}
	}
	for k, want := range map[string]string{
		"Data blocks":     fmt.Sprint(v.DataBlocks),
		"Data block size": fmt.Sprint(v.DataBlockSize),
		"Hash block size": fmt.Sprint(v.HashBlockSize),
		"Hash algorithm":  v.Algorithm,
		"Salt":            v.Salt,
	} {
		if fields[k] != want {
			t.Errorf("veritysetup dump %s = %q, the table says %q", k, fields[k], want)
		}
	}
	// veritysetup verify with the table's root and hash start accepts it.
	hashOffset := (v.HashStart - 1) * uint64(v.HashBlockSize)
	if out, err := exec.Command("veritysetup", "verify", "--hash-offset", fmt.Sprint(hashOffset), "--data-blocks", fmt.Sprint(v.DataBlocks), l.blob, l.blob, v.Root).CombinedOutput(); err != nil {
		t.Errorf("veritysetup verify with the table's parameters: %v\n%s", err, out)
	}
}

// A target whose last component is a symlink: the mount lands on the
// symlink's destination, and unmounting (by either path) must take it down
// rather than forget it.
func TestMountSymlinkTarget(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "link:1")
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	p, err := e.m.Mount(context.Background(), img, "l1", link, Owner{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Target != real {
		t.Errorf("plan target %s, want the resolved %s", p.Target, real)
	}
	if _, err := e.m.Mount(context.Background(), img, "l2", real, Owner{}, Options{}); !errors.Is(err, ErrMounted) {
		t.Errorf("mount on the symlink's destination: %v, want ErrMounted", err)
	}
	if err := e.m.UnmountTarget(link); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(real) {
		t.Error("the overlay stays mounted at the symlink's destination after UnmountTarget")
		unmount(real)
	}
}

// A `vessel mount` (which has no owner process) killed part-way leaves a
// record not marked mounted: Cleanup removes it, and mounting the same
// target again just works.
func TestInterruptedMountIsStale(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "killed:1")
	target := filepath.Join(t.TempDir(), "m")
	interrupted := func() {
		unlock, err := e.m.lock()
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		p, err := e.m.Plan(img, "k1", target, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.m.writeRecord(record{Plan: p}); err != nil {
			t.Fatal(err)
		}
		if err := e.m.acquire(p.Layers[0], "k1"); err != nil {
			t.Fatal(err)
		}
	}
	interrupted()
	if _, err := e.m.Mount(context.Background(), img, "k1", target, Owner{}, Options{}); err != nil {
		t.Fatalf("mount after an interrupted mount: %v", err)
	}
	if err := e.m.Unmount("k1"); err != nil {
		t.Fatal(err)
	}
	interrupted()
	done, err := e.m.Cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if len(done) == 0 || !strings.Contains(done[0], "k1") {
		t.Errorf("cleanup removed %q, want the interrupted mount", done)
	}
}

// A blob rewritten in place while its layer is mounted: the next user of
// the shared layer mount is refused (the mounted layer may now serve the
// new bytes, which nobody verified), and once the layer is unmounted the
// blob is verified afresh.
func TestSharedLayerBlobRewrittenRefused(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "rw:1")
	target := func(id string) string { return filepath.Join(e.run, "containers", id, "rootfs") }
	if _, err := e.m.Mount(context.Background(), img, "c1", target("c1"), Self(), Options{Writable: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a coarse clock must still see a new mtime
	blob := img.layers[0].blob
	b := read(t, blob)
	if err := os.WriteFile(blob, []byte(b), 0o644); err != nil { // same bytes, same inode
		t.Fatal(err)
	}
	_, err := e.m.Mount(context.Background(), img, "c2", target("c2"), Self(), Options{Writable: true})
	if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "changed since its mounted layer was verified") {
		t.Fatalf("second user after an in-place rewrite: %v, want ErrVerify naming the change", err)
	}
	if isMountPoint(target("c2")) {
		t.Error("refused mount left its target mounted")
	}
	if _, err := os.Stat(filepath.Join(refsDir(e.run), img.layers[0].hex()+".c2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused mount left a layer reference: %v", err)
	}
	if err := e.m.Unmount("c1"); err != nil {
		t.Fatal(err)
	}
	// Unmounted: the next mount verifies the (unchanged) bytes again.
	before := e.m.Stats().Verified
	if _, err := e.m.Mount(context.Background(), img, "c2", target("c2"), Self(), Options{Writable: true}); err != nil {
		t.Fatalf("after the last user let go: %v", err)
	}
	if got := e.m.Stats().Verified - before; got != 1 {
		t.Errorf("%d layers verified again, want the rewritten one", got)
	}
	if err := e.m.Unmount("c2"); err != nil {
		t.Fatal(err)
	}
}

// wrongRootImage stores a copy of image ref whose layer n (0-based) claims
// another verity root hash, tagged as newRef.
func wrongRootImage(t *testing.T, s *store.Store, ref, newRef string, n int) {
	t.Helper()
	img, err := image.Read(s, ref)
	if err != nil {
		t.Fatal(err)
	}
	m := img.Manifest()
	rh := []byte(m.Layers[n].Annotations[layer.AnnotationVerityRoot])
	if rh[0] == '0' {
		rh[0] = '1'
	} else {
		rh[0] = '0'
	}
	m.Layers[n].Annotations[layer.AnnotationVerityRoot] = string(rh)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.PutBlob(bytes.NewReader(b), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(b), Size: int64(len(b))})
	if err != nil {
		t.Fatal(err)
	}
	d.MediaType = ocispec.MediaTypeImageManifest
	if err := s.Tag(newRef, d); err != nil {
		t.Fatal(err)
	}
}

// An image whose manifest carries a wrong root hash for a layer another
// image holds mounted is refused, and so it is on its own.
func TestSharedLayerWrongRootHashRefused(t *testing.T) {
	e := newEnv(t)
	good := testImage(t, e.s, "good:1")
	wrongRootImage(t, e.s, "good:1", "wrong:1", 1)
	bad, err := LocalImage(e.s, "wrong:1")
	if err != nil {
		t.Fatalf("a well-formed root hash is for Manager to check: %v", err)
	}
	if _, err := e.m.Mount(context.Background(), good, "g", filepath.Join(e.run, "g"), Self(), Options{}); err != nil {
		t.Fatal(err)
	}
	_, err = e.m.Mount(context.Background(), bad, "w", filepath.Join(e.run, "w"), Self(), Options{})
	if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "verified against verity root hash") || !strings.Contains(err.Error(), "layer 2 of 2") {
		t.Fatalf("wrong root hash while the layer is mounted: %v, want ErrVerify naming layer 2's root hash", err)
	}
	if isMountPoint(filepath.Join(e.run, "w")) {
		t.Error("refused image mounted")
	}
	if err := e.m.Unmount("g"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Mount(context.Background(), bad, "w", filepath.Join(e.run, "w"), Self(), Options{}); !errors.Is(err, ErrVerify) {
		t.Fatalf("wrong root hash with nothing mounted: %v, want ErrVerify", err)
	}
}

// Without dm-verity, a blob that someone else could change after it is
// verified is refused before it is verified.
func TestWritableBlobRefused(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "perm:1")
	blob := img.layers[1].blob
	for _, c := range []struct {
		name  string
		apply func() error
		want  string
	}{
		{"group-writable", func() error { return os.Chmod(blob, 0o664) }, "writable by group or others"},
		{"world-writable", func() error { return os.Chmod(blob, 0o646) }, "writable by group or others"},
		{"owned by another user", func() error {
			if err := os.Chmod(blob, 0o644); err != nil {
				return err
			}
			return os.Chown(blob, 1000, 1000)
		}, "owned by uid 1000"},
	} {
		if err := c.apply(); err != nil {
			t.Fatal(err)
		}
		_, err := e.m.Mount(context.Background(), img, "p", filepath.Join(e.run, "p"), Self(), Options{})
		if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrVerify saying %q", c.name, err, c.want)
		}
	}
	if err := os.Chown(blob, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Mount(context.Background(), img, "p", filepath.Join(e.run, "p"), Self(), Options{}); err != nil {
		t.Fatalf("root-owned 0644 blob: %v", err)
	}
	if err := e.m.Unmount("p"); err != nil {
		t.Fatal(err)
	}
}

// LocalImage refuses, before any blob is read, what image verify refuses.
func TestLocalImageRefusesBadDescriptors(t *testing.T) {
	e := newEnv(t)
	testImage(t, e.s, "ok:1")
	for _, c := range []struct {
		ref  string
		edit func(*ocispec.Manifest)
		want string
	}{
		{"none:1", func(m *ocispec.Manifest) { m.Layers = []ocispec.Descriptor{} }, "image has no layers"},
		{"size0:1", func(m *ocispec.Manifest) { m.Layers[1].Size = 0 }, "layer 2 (sha256:"},
		{"size:1", func(m *ocispec.Manifest) { m.Layers[0].Size-- }, "its descriptor says"},
		{"twice:1", func(m *ocispec.Manifest) { m.Layers = append(m.Layers, m.Layers[1]) }, "the same layer as layer 2"},
		{"noroot:1", func(m *ocispec.Manifest) { delete(m.Layers[0].Annotations, layer.AnnotationVerityRoot) }, "no verity root hash"},
	} {
		img, err := image.Read(e.s, "ok:1")
		if err != nil {
			t.Fatal(err)
		}
		m := img.Manifest()
		c.edit(&m)
		b, _ := json.Marshal(m)
		d, err := e.s.PutBlob(bytes.NewReader(b), ocispec.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))})
		if err != nil {
			t.Fatal(err)
		}
		d.MediaType = ocispec.MediaTypeImageManifest
		if err := e.s.Tag(c.ref, d); err != nil {
			t.Fatal(err)
		}
		if _, err := LocalImage(e.s, c.ref); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LocalImage(%s): %v, want an error saying %q", c.ref, err, c.want)
		}
	}
}

// Two stores with the same image share one run directory: the second
// store's image shares the first one's layer mounts (same digest and root
// hash, and the mounted file is unchanged), until that file is rewritten.
func TestSharedLayersAcrossStores(t *testing.T) {
	e := newEnv(t)
	img1 := testImage(t, e.s, "same:1")
	s2, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img2 := testImage(t, s2, "same:1")
	if img1.Digest() != img2.Digest() || img1.layers[0].blob == img2.layers[0].blob {
		t.Fatalf("want the same image in two stores: %s %s", img1.Digest(), img2.Digest())
	}
	if _, err := e.m.Mount(context.Background(), img1, "one", filepath.Join(e.run, "one"), Self(), Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Mount(context.Background(), img2, "two", filepath.Join(e.run, "two"), Self(), Options{}); err != nil {
		t.Fatalf("the same layers from another store: %v", err)
	}
	if st := e.m.Stats(); st.LayersShared != 2 {
		t.Errorf("%+v: want both layers shared", st)
	}
	if err := e.m.Unmount("two"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(img1.layers[1].blob, []byte(read(t, img1.layers[1].blob)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = e.m.Mount(context.Background(), img2, "two", filepath.Join(e.run, "two"), Self(), Options{})
	if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), img1.layers[1].blob+" changed since") {
		t.Fatalf("mounted file rewritten: %v, want ErrVerify naming the mounted file", err)
	}
	if err := e.m.Unmount("one"); err != nil {
		t.Fatal(err)
	}
}
