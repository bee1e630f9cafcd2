package recipe

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
)

// CacheFile is the name of the build cache index in the store root.
const CacheFile = "build-cache.json"

// ErrCacheCorrupt is returned when the cache index cannot be read.
var ErrCacheCorrupt = errors.New("build cache corrupt")

// Cache is the persistent build cache index: layer key -> layer descriptor
// and config key -> image manifest descriptor, in <store root>/build-cache.json.
// The blobs themselves live in the store; an entry whose blob the store no
// longer has (garbage collected, deleted) is a miss, never an error.
//
// Every change takes an exclusive lock (<store root>/build-cache.lock),
// re-reads the file and replaces it atomically, so concurrent builds in
// several goroutines or processes never lose each other's entries. Readers
// take no lock: they see the old or the new file, never a mix. A missing
// file is an empty cache; a corrupt one is refused (ErrCacheCorrupt) until
// Reset rewrites it, which is what `vessel build --no-cache` does.
type Cache struct {
	path string
	lock string
	// Note, when set, is told when an index of another format version is
	// discarded (a cache written by an older or newer vessel).
	Note  func(msg string)
	noted atomic.Bool
}

// BlobChecker reports whether a store has a blob; *store.Store is one.
type BlobChecker interface {
	HasBlob(digest.Digest) bool
}

// OpenCache returns the cache index of the store rooted at root. It does no
// I/O: a missing file is fine until the first write creates it.
func OpenCache(root string) *Cache {
	return &Cache{path: filepath.Join(root, CacheFile), lock: filepath.Join(root, "build-cache.lock")}
}

// Path is the index file.
func (c *Cache) Path() string { return c.path }

const cacheVersion = 1

type cacheIndex struct {
	Version int                                  `json:"version"`
	Layers  map[digest.Digest]ocispec.Descriptor `json:"layers"`
	Images  map[digest.Digest]ocispec.Descriptor `json:"images"`
}

func (c *Cache) corrupt(why error) error {
	return fmt.Errorf("%w: %s: %v; rebuild without the cache to rewrite it", ErrCacheCorrupt, c.path, why)
}

// maxCacheIndex bounds the cache index read into memory.
const maxCacheIndex = 64 << 20

// load reads the index; a missing file is an empty index.
func (c *Cache) load() (*cacheIndex, error) {
	idx := &cacheIndex{Version: cacheVersion, Layers: map[digest.Digest]ocispec.Descriptor{}, Images: map[digest.Digest]ocispec.Descriptor{}}
	b, err := bounded.ReadFile(c.path, maxCacheIndex)
	if errors.Is(err, fs.ErrNotExist) {
		return idx, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read build cache: %w", err)
	}
	// An index of another format version (an older or newer vessel wrote
	// it) is discarded: its keys mean something else, so every entry would
	// be a miss anyway. The next write replaces it.
	var ver struct {
		Version int `json:"version"`
	}
	if json.Unmarshal(b, &ver) == nil && ver.Version != cacheVersion {
		if c.Note != nil && c.noted.CompareAndSwap(false, true) {
			c.Note(fmt.Sprintf("the build cache %s has format version %d, this vessel writes %d: discarded, everything is built again", c.path, ver.Version, cacheVersion))
		}
		return idx, nil
	}
	var in cacheIndex
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, c.corrupt(err)
	}
	if dec.More() {
		return nil, c.corrupt(errors.New("data after the index"))
	}
	for _, m := range []map[digest.Digest]ocispec.Descriptor{in.Layers, in.Images} {
		for k, d := range m {
			if err := k.Validate(); err != nil {
				return nil, c.corrupt(fmt.Errorf("key %q: %w", k, err))
			}
			if err := d.Digest.Validate(); err != nil {
				return nil, c.corrupt(fmt.Errorf("entry %s: digest %q: %w", k, d.Digest, err))
			}
		}
	}
	for k, d := range in.Layers {
		idx.Layers[k] = d
	}
	for k, d := range in.Images {
		idx.Images[k] = d
	}
	return idx, nil
}

// Layer looks up a layer key. A hit needs the blob in store.
func (c *Cache) Layer(k digest.Digest, store BlobChecker) (ocispec.Descriptor, bool, error) {
	return c.get(k, store, func(i *cacheIndex) map[digest.Digest]ocispec.Descriptor { return i.Layers })
}

// Image looks up a config key: the image manifest built for it. A hit needs
// the manifest blob in store; the executor reads the manifest through the
// store, which verifies it and everything it references.
func (c *Cache) Image(k digest.Digest, store BlobChecker) (ocispec.Descriptor, bool, error) {
	return c.get(k, store, func(i *cacheIndex) map[digest.Digest]ocispec.Descriptor { return i.Images })
}

func (c *Cache) get(k digest.Digest, store BlobChecker, m func(*cacheIndex) map[digest.Digest]ocispec.Descriptor) (ocispec.Descriptor, bool, error) {
	idx, err := c.load()
	if err != nil {
		return ocispec.Descriptor{}, false, err
	}
	d, ok := m(idx)[k]
	if !ok || !store.HasBlob(d.Digest) {
		return ocispec.Descriptor{}, false, nil
	}
	return d, true, nil
}

// PutLayer records the layer built for layer key k.
func (c *Cache) PutLayer(k digest.Digest, d ocispec.Descriptor) error {
	return c.update(func(i *cacheIndex) { i.Layers[k] = d }, false, k, d)
}

// PutImage records the image manifest built for config key k.
func (c *Cache) PutImage(k digest.Digest, d ocispec.Descriptor) error {
	return c.update(func(i *cacheIndex) { i.Images[k] = d }, false, k, d)
}

// Reset replaces the index, corrupt or not, with an empty one.
func (c *Cache) Reset() error {
	return c.update(func(*cacheIndex) {}, true, "", ocispec.Descriptor{})
}

func (c *Cache) update(fn func(*cacheIndex), reset bool, k digest.Digest, d ocispec.Descriptor) error {
	if !reset {
		if err := k.Validate(); err != nil {
			return fmt.Errorf("build cache: key %q: %w", k, err)
		}
		if err := d.Digest.Validate(); err != nil {
			return fmt.Errorf("build cache: entry %s: %w", k, err)
		}
	}
	unlock, err := c.lockFile()
	if err != nil {
		return err
	}
	defer unlock()
	var idx *cacheIndex
	if reset {
		idx = &cacheIndex{Version: cacheVersion, Layers: map[digest.Digest]ocispec.Descriptor{}, Images: map[digest.Digest]ocispec.Descriptor{}}
	} else if idx, err = c.load(); err != nil {
		return err
	}
	fn(idx)
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("encode build cache: %w", err)
	}
	if err := atomicfile.Write(c.path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write build cache %s: %w", c.path, err)
	}
	return nil
}

func (c *Cache) lockFile() (func(), error) {
	if err := os.MkdirAll(filepath.Dir(c.lock), 0o755); err != nil {
		return nil, fmt.Errorf("lock build cache: %w", err)
	}
	f, err := os.OpenFile(c.lock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock build cache: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close() // the lock was not taken; nothing to release
		return nil, fmt.Errorf("lock build cache %s: %w", c.lock, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}
