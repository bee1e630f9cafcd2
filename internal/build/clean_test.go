package build

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/recipe"
)

// TestClean: clean removes the build cache, pulled bases, stale build
// directories and temporary downloads, skips a directory with a mount
// below it, frees the blobs only the cache kept (a build_only image) and
// leaves tagged images alone; the next build runs its scripts again. With
// All the downloads go too.
func TestClean(t *testing.T) {
	e := newEnv(t)
	rec := baseRecipe + `
scratchpad:
  from: {type: built, tag: base}
  build_only: true
  run: echo tmp > /tmp-only
`
	res := e.mustBuild(rec)
	var onlyDigest = res.Images[1].Descriptor.Digest
	root := e.s.Root()
	plant := func(rel string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("12345"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plant("tmp/build-123/upper/file")
	plant("tmp/src-busy/x")
	plant("tmp/unrelated-1/x")
	plant(BasesDir + "/blobs/sha256/aa")
	plant(DownloadsDir + "/by-hash/0123")
	plant(DownloadsDir + "/tmp/partial")
	mi := filepath.Join(e.dir, "mountinfo")
	if err := os.WriteFile(mi, []byte("36 35 98:0 / "+filepath.Join(root, "tmp/src-busy/root")+" rw,noatime - squashfs /dev/loop0 ro\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cr, err := Clean(e.s, CleanOptions{MountInfo: mi})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(cr.Removed)
	want := []string{BasesDir, recipe.CacheFile, DownloadsDir + "/tmp", "tmp/build-123"}
	slices.Sort(want)
	if !slices.Equal(cr.Removed, want) {
		t.Errorf("removed %v, want %v", cr.Removed, want)
	}
	if !slices.Equal(cr.Skipped, []string{"tmp/src-busy"}) {
		t.Errorf("skipped %v", cr.Skipped)
	}
	for _, keep := range []string{"tmp/src-busy/x", "tmp/unrelated-1/x", DownloadsDir + "/by-hash/0123"} {
		if _, err := os.Stat(filepath.Join(root, keep)); err != nil {
			t.Errorf("%s was removed: %v", keep, err)
		}
	}
	if !slices.Contains(cr.GC.Removed, onlyDigest) {
		t.Errorf("gc kept the build_only image %s: %v", onlyDigest, cr.GC.Removed)
	}
	if _, err := image.Verify(e.s, "base", nil); err != nil {
		t.Errorf("the tagged image no longer verifies: %v", err)
	}
	e.mustBuild(rec)
	if e.runs != 2 {
		t.Errorf("after clean: %d scripts ran, want 2 (the cache is gone)", e.runs)
	}
	cr, err = Clean(e.s, CleanOptions{All: true, MountInfo: mi})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cr.Removed, DownloadsDir) {
		t.Errorf("--all removed %v, not the downloads", cr.Removed)
	}
	for _, d := range []string{"tmp/src-busy", "tmp/unrelated-1"} {
		if err := os.RemoveAll(filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
}
