// Package store is vessel's local image store: a standard OCI image layout
// (<root>/oci) that skopeo and umoci can read, plus vessel's own state beside
// it (<root>/tmp for in-flight writes, <root>/lock for index updates).
//
// Every blob enters through PutBlob (temp file, fsync, rename: a killed write
// leaves no visible partial blob) and every read checks size and digest.
// index.json is only changed under an exclusive lock and replaced atomically,
// so concurrent vessel processes never lose a tag. Garbage collection takes
// the writers' lock exclusively, so it never deletes a blob that an
// in-flight write is about to reference.
//
// Callers that want images rather than blobs use package image, which builds
// on this one.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/reference"
	"golang.org/x/sys/unix"
)

var (
	// ErrNotFound is returned for a tag or blob the store does not have.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt is returned when stored content fails its size or digest check
	// or cannot be parsed.
	ErrCorrupt = errors.New("corrupt")
)

// RefNameAnnotation is the OCI annotation that names a tag in index.json.
const RefNameAnnotation = ocispec.AnnotationRefName

// MaxJSONSize bounds manifests, configs and index.json read into memory.
const MaxJSONSize = 8 << 20

const maxJSONSize = MaxJSONSize

// Store is an open image store. It is safe for concurrent use by several
// goroutines and several processes.
type Store struct {
	root     string
	dir      string // the OCI layout
	readOnly bool
}

// Open opens the store at root, creating an empty OCI layout if there is none.
func Open(root string) (*Store, error) {
	s := &Store{root: root, dir: filepath.Join(root, "oci")}
	for _, d := range []string{s.layout(), filepath.Join(s.layout(), "blobs", "sha256"), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("open store %s: %w", root, err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.layout(), ocispec.ImageLayoutFile)); errors.Is(err, os.ErrNotExist) {
		if err := s.initLayout(); err != nil {
			return nil, fmt.Errorf("open store %s: %w", root, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	return s, nil
}

func (s *Store) initLayout() error {
	return s.withLock(func() error {
		layoutFile := filepath.Join(s.layout(), ocispec.ImageLayoutFile)
		if _, err := os.Stat(layoutFile); err == nil {
			return nil // another process won the race
		}
		b, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
		if err := atomicfile.WriteIn(s.tmpDir(), layoutFile, b, 0o644); err != nil {
			return err
		}
		if _, err := os.Stat(s.indexPath()); errors.Is(err, os.ErrNotExist) {
			return s.writeIndex(emptyIndex())
		}
		return nil
	})
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// LayoutDir is the OCI image layout directory (<root>/oci).
func (s *Store) LayoutDir() string { return s.layout() }

// OpenLayout opens any OCI image layout directory read-only, for example
// one written by skopeo, to read images from it with the same checks.
func OpenLayout(dir string) (*Store, error) {
	s := &Store{dir: dir, readOnly: true}
	b, err := bounded.ReadFile(filepath.Join(dir, ocispec.ImageLayoutFile), MaxJSONSize)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	var l ocispec.ImageLayout
	if err := unmarshalOne(b, &l); err != nil || l.Version == "" {
		return nil, fmt.Errorf("OCI layout %s: %w: bad oci-layout file", dir, ErrCorrupt)
	}
	if _, err := s.readIndex(); err != nil {
		return nil, err
	}
	return s, nil
}

var errReadOnly = errors.New("this OCI layout was opened read-only")

func (s *Store) layout() string    { return s.dir }
func (s *Store) tmpDir() string    { return filepath.Join(s.root, "tmp") }
func (s *Store) indexPath() string { return filepath.Join(s.layout(), ocispec.ImageIndexFile) }

// BlobPath is where the blob with digest d lives. The file may be absent or,
// if someone tampered with the store, wrong: callers must verify what they read.
func (s *Store) BlobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob %q: %w", d, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("blob %s: only sha256 digests are supported", d)
	}
	return filepath.Join(s.layout(), "blobs", string(d.Algorithm()), d.Encoded()), nil
}

// lockFile takes the store lock in the given flock mode (unix.LOCK_EX or
// unix.LOCK_SH) on <root>/name and returns its release function.
func (s *Store) lockFile(name string, how int) (func(), error) {
	if s.readOnly {
		return nil, errReadOnly
	}
	f, err := os.OpenFile(filepath.Join(s.root, name), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock store %s: %w", name, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

// withLock runs fn holding the exclusive index lock.
func (s *Store) withLock(fn func() error) error {
	unlock, err := s.lockFile("lock", unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}

// Writer marks the start of a multi-step write (blobs first, tag last) and
// returns the function that ends it. While any writer is active, GC waits,
// so blobs that are written but not yet tagged are never collected.
func (s *Store) Writer() (done func(), err error) {
	return s.lockFile("gc.lock", unix.LOCK_SH)
}

// Exclusive waits until no writer (Writer) or GC is active and holds new
// ones off until done is called: for work that removes what writers use,
// such as the build caches (vessel clean). Do not call GC while holding it.
func (s *Store) Exclusive() (done func(), err error) {
	return s.lockFile("gc.lock", unix.LOCK_EX)
}

// ParseRef splits a store reference "NAME[:TAG]" into name and tag
// (default latest), with the rules of package reference: NAME follows the
// distribution spec grammar. A digest or another transport is refused.
func ParseRef(ref string) (name, tag string, err error) {
	r, err := reference.Parse(ref)
	if err != nil {
		return "", "", err
	}
	if r.Transport != reference.Store || r.Digest != "" {
		return "", "", fmt.Errorf("image reference %q: want a store NAME[:TAG] here", ref)
	}
	return r.Name, r.Tag, nil
}
