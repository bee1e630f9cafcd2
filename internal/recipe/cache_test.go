package recipe

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type blobSet map[digest.Digest]bool

func (b blobSet) HasBlob(d digest.Digest) bool { return b[d] }

type allBlobs struct{}

func (allBlobs) HasBlob(digest.Digest) bool { return true }

func desc(s string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: "application/vnd.stacker.image.layer.squashfs+zstd", Digest: digest.FromString(s), Size: int64(len(s))}
}

func TestCacheMissingAndHit(t *testing.T) {
	root := t.TempDir()
	c := OpenCache(root)
	k := digest.FromString("key")
	if _, ok, err := c.Layer(k, allBlobs{}); ok || err != nil {
		t.Fatalf("missing file: %v %v", ok, err)
	}
	d := desc("layer")
	if err := c.PutLayer(k, d); err != nil {
		t.Fatal(err)
	}
	if err := c.PutImage(k, desc("manifest")); err != nil {
		t.Fatal(err)
	}
	got, ok, err := c.Layer(k, blobSet{d.Digest: true})
	if !ok || err != nil || got.Digest != d.Digest {
		t.Fatalf("hit: %v %v %v", got, ok, err)
	}
	// The blob is gone from the store: a miss, not an error.
	if _, ok, err := c.Layer(k, blobSet{}); ok || err != nil {
		t.Fatalf("gone blob: %v %v", ok, err)
	}
	if got, ok, _ := c.Image(k, allBlobs{}); !ok || got.Digest != desc("manifest").Digest {
		t.Fatal("image entry lost")
	}
}

func TestCacheCorrupt(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":     "{not json",
		"truncated":   `{"version":1,"layers":{`,
		"unknown":     `{"version":1,"layers":{},"images":{},"x":1}`,
		"bad key":     `{"version":1,"layers":{"nope":{"mediaType":"x","digest":"sha256:` + strings.Repeat("0", 64) + `","size":1}},"images":{}}`,
		"bad digest":  `{"version":1,"layers":{"sha256:` + strings.Repeat("0", 64) + `":{"mediaType":"x","digest":"md5:1","size":1}},"images":{}}`,
		"two objects": `{"version":1}{"version":1}`,
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			c := OpenCache(root)
			if err := os.WriteFile(c.Path(), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, _, err := c.Layer(digest.FromString("k"), allBlobs{})
			if !errors.Is(err, ErrCacheCorrupt) || !containsAll(err.Error(), c.Path(), "without the cache") {
				t.Fatalf("lookup: %v", err)
			}
			if err := c.PutLayer(digest.FromString("k"), desc("x")); !errors.Is(err, ErrCacheCorrupt) {
				t.Fatalf("put over a corrupt file: %v", err)
			}
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
			if err := c.PutLayer(digest.FromString("k"), desc("x")); err != nil {
				t.Fatalf("put after reset: %v", err)
			}
		})
	}
}

// TestCacheOtherVersion: an index another vessel wrote (another format
// version) is discarded with one note, not refused; the next write
// replaces it with this version.
func TestCacheOtherVersion(t *testing.T) {
	c := OpenCache(t.TempDir())
	old := `{"version":0,"entries":{"sha256:` + strings.Repeat("1", 64) + `":"x"}}`
	if err := os.WriteFile(c.Path(), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	var notes []string
	c.Note = func(m string) { notes = append(notes, m) }
	if _, ok, err := c.Layer(digest.FromString("k"), allBlobs{}); err != nil || ok {
		t.Fatalf("lookup in an old cache: %v %v", ok, err)
	}
	c.Layer(digest.FromString("k2"), allBlobs{})
	if len(notes) != 1 || !containsAll(notes[0], c.Path(), "version 0", "discarded") {
		t.Errorf("notes: %q", notes)
	}
	if err := c.PutLayer(digest.FromString("k"), desc("x")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(c.Path()); !strings.Contains(string(b), `"version": 1`) || strings.Contains(string(b), "entries") {
		t.Errorf("index after a write: %s", b)
	}
	if _, ok, err := c.Layer(digest.FromString("k"), allBlobs{}); err != nil || !ok {
		t.Errorf("entry after the rewrite: %v %v", ok, err)
	}
}

// TestCacheConcurrentWriters: goroutines and processes adding entries at
// once lose none of them.
func TestCacheConcurrentWriters(t *testing.T) {
	root := t.TempDir()
	const procs, perProc, goroutines = 3, 15, 4
	var wg sync.WaitGroup
	errs := make(chan error, procs+goroutines)
	for p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestCacheWriterProcess$")
			cmd.Env = append(os.Environ(), "RECIPE_CACHE_ROOT="+root, "RECIPE_CACHE_PREFIX=p"+strconv.Itoa(p), "RECIPE_CACHE_N="+strconv.Itoa(perProc))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("writer process: %v\n%s", err, out)
			}
		}()
	}
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- writeEntries(root, "g"+strconv.Itoa(g), perProc)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c := OpenCache(root)
	for _, prefix := range []string{"p0", "p1", "p2", "g0", "g1", "g2", "g3"} {
		for i := range perProc {
			if _, ok, err := c.Layer(digest.FromString(prefix+strconv.Itoa(i)), allBlobs{}); !ok || err != nil {
				t.Fatalf("entry %s%d lost (%v)", prefix, i, err)
			}
		}
	}
}

func writeEntries(root, prefix string, n int) error {
	c := OpenCache(root)
	for i := range n {
		if err := c.PutLayer(digest.FromString(prefix+strconv.Itoa(i)), desc(prefix)); err != nil {
			return err
		}
	}
	return nil
}

// TestCacheWriterProcess is the child of TestCacheConcurrentWriters.
func TestCacheWriterProcess(t *testing.T) {
	root := os.Getenv("RECIPE_CACHE_ROOT")
	if root == "" {
		t.Skip("helper process for TestCacheConcurrentWriters")
	}
	n, _ := strconv.Atoi(os.Getenv("RECIPE_CACHE_N"))
	if err := writeEntries(root, os.Getenv("RECIPE_CACHE_PREFIX"), n); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, CacheFile)); err != nil {
		t.Fatal(err)
	}
}
