package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// GCResult reports what a collection removed.
type GCResult struct {
	Removed []digest.Digest `json:"removed"`
	// Bytes counts removed blobs and temp files.
	Bytes int64 `json:"bytes"`
	// Temp names the stale temp files and partial downloads removed from
	// <root>/tmp; TempBytes is their size.
	Temp      []string `json:"temp,omitempty"`
	TempBytes int64    `json:"tempBytes,omitempty"`
}

// GC deletes every blob that no index entry reaches (through manifests,
// their configs and layers, nested indexes, and manifests whose subject is a
// kept manifest, such as signatures), and stale temp files. It waits for
// in-flight writers (see Writer) and holds them off while it runs.
func (s *Store) GC() (GCResult, error) {
	res := GCResult{Removed: []digest.Digest{}} // [] in JSON when nothing goes
	unlockGC, err := s.lockFile("gc.lock", unix.LOCK_EX)
	if err != nil {
		return res, err
	}
	defer unlockGC()
	err = s.withLock(func() error {
		idx, err := s.readIndex()
		if err != nil {
			return fmt.Errorf("gc: %w (nothing was deleted)", err)
		}
		keep := map[digest.Digest]bool{}
		var walk func(d ocispec.Descriptor, depth int) error
		walk = func(d ocispec.Descriptor, depth int) error {
			if keep[d.Digest] {
				return nil
			}
			keep[d.Digest] = true
			if depth > maxNesting {
				return fmt.Errorf("manifest %s: indexes nested more than %d deep", d.Digest, maxNesting)
			}
			children, err := s.manifestChildren(d)
			if err != nil {
				return err
			}
			for _, c := range children.blobs {
				keep[c.Digest] = true
			}
			for _, m := range children.manifests {
				if err := walk(m, depth+1); err != nil {
					return err
				}
			}
			return nil
		}
		for _, d := range idx.Manifests {
			if err := walk(d, 0); err != nil {
				return fmt.Errorf("gc: %w (nothing was deleted)", err)
			}
		}
		if err := s.keepReferrers(keep, walk); err != nil {
			return fmt.Errorf("gc: %w (nothing was deleted)", err)
		}
		dir := filepath.Join(s.layout(), "blobs", "sha256")
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			if keep[d] {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("gc: remove %s: %w", d, err)
			}
			res.Removed = append(res.Removed, d)
			res.Bytes += info.Size()
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.Temp, res.TempBytes = s.cleanTemp(time.Hour)
	res.Bytes += res.TempBytes
	return res, nil
}

// Media types of Docker manifests, which a pull stores as they are.
const (
	DockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	// ociArtifactManifest is the withdrawn OCI 1.1-rc artifact manifest
	// ("blobs" instead of "config" and "layers").
	ociArtifactManifest = "application/vnd.oci.artifact.manifest.v1+json"
)

// maxNesting bounds index nesting in the gc walk.
const maxNesting = 8

// children are the descriptors a manifest or index references.
type children struct {
	manifests []ocispec.Descriptor // nested manifests (of an index)
	blobs     []ocispec.Descriptor // config, layers, blobs (of a manifest)
}

// manifestChildren reads the manifest or index d (OCI image manifest or
// index, Docker v2 schema 2 manifest or manifest list, OCI artifact
// manifest) and returns what it references. It decides by the content's
// own mediaType or shape, not only by the descriptor's media type, and
// fails, naming d, for anything it cannot parse: gc must not delete the
// blobs of a manifest it did not understand. A manifest that is not in the
// store has nothing to keep.
func (s *Store) manifestChildren(d ocispec.Descriptor) (children, error) {
	var c children
	b, err := s.ReadBlob(ocispec.Descriptor{Digest: d.Digest})
	if errors.Is(err, ErrNotFound) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("manifest %s (media type %q): %w", d.Digest, d.MediaType, err)
	}
	var m struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Config        *ocispec.Descriptor  `json:"config"`
		Layers        []ocispec.Descriptor `json:"layers"`
		Blobs         []ocispec.Descriptor `json:"blobs"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
	}
	bad := func(why string) (children, error) {
		return c, &BlobError{Digest: d.Digest, Problem: fmt.Sprintf("manifest (media type %q) cannot be parsed: %s", d.MediaType, why), Err: ErrCorrupt}
	}
	if err := unmarshalOne(b, &m); err != nil {
		return bad(err.Error())
	}
	mt := m.MediaType
	if mt == "" {
		mt = d.MediaType
	}
	switch {
	case mt == ocispec.MediaTypeImageIndex || mt == DockerManifestList || (mt == "" && m.Manifests != nil):
		if m.Config != nil || m.Layers != nil {
			return bad("an index with config or layers")
		}
		c.manifests = m.Manifests
	case mt == ocispec.MediaTypeImageManifest || mt == DockerManifest || mt == ociArtifactManifest || (mt == "" && (m.Config != nil || m.Blobs != nil)):
		if m.Manifests != nil {
			return bad("a manifest with manifests")
		}
		if m.Config == nil && mt != ociArtifactManifest {
			return bad("no config")
		}
		if m.Config != nil {
			c.blobs = append(c.blobs, *m.Config)
		}
		c.blobs = append(append(c.blobs, m.Layers...), m.Blobs...)
	default:
		return bad("not an OCI or Docker image manifest or index")
	}
	if m.SchemaVersion != 2 {
		return bad(fmt.Sprintf("schemaVersion %d, expected 2", m.SchemaVersion))
	}
	for i, x := range append(append([]ocispec.Descriptor{}, c.manifests...), c.blobs...) {
		if err := x.Digest.Validate(); err != nil {
			return bad(fmt.Sprintf("reference %d: digest %q: %v", i, x.Digest, err))
		}
	}
	return c, nil
}

// keepReferrers marks manifests whose subject is a kept manifest (signatures
// and other referrers), repeating until nothing new is found.
func (s *Store) keepReferrers(keep map[digest.Digest]bool, walk func(ocispec.Descriptor, int) error) error {
	dir := filepath.Join(s.layout(), "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for changed := true; changed; {
		changed = false
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			if keep[d] || e.Type()&os.ModeType != 0 {
				continue
			}
			info, err := e.Info()
			if err != nil || info.Size() > 64<<10 {
				continue // referrers are small manifests; layers are not
			}
			b, err := s.ReadBlob(ocispec.Descriptor{Digest: d})
			if err != nil {
				continue
			}
			var m struct {
				Subject *ocispec.Descriptor `json:"subject"`
			}
			if json.Unmarshal(b, &m) != nil || m.Subject == nil || !keep[m.Subject.Digest] {
				continue
			}
			if err := walk(ocispec.Descriptor{Digest: d}, 0); err != nil {
				return err
			}
			changed = true
		}
	}
	return nil
}

// cleanTemp removes what killed or failed writers left in <root>/tmp: a
// partial download (partial-*) as soon as no process holds its lock (a
// running pull holds it from open to commit), anything else once it is
// older than age. It runs under the exclusive gc lock, so no writer that
// announced itself (Writer) is running. It returns the names removed and
// their size.
func (s *Store) cleanTemp(age time.Duration) ([]string, int64) {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return nil, 0
	}
	var names []string
	var bytes int64
	for _, e := range ents {
		p := filepath.Join(s.tmpDir(), e.Name())
		info, err := e.Info()
		if err != nil {
			continue
		}
		stale := time.Since(info.ModTime()) > age
		if strings.HasPrefix(e.Name(), PartialPrefix) && info.Mode().IsRegular() {
			stale = stale || !locked(p)
		}
		if !stale {
			continue
		}
		size := info.Size()
		if info.IsDir() {
			size = 0
		}
		if err := os.RemoveAll(p); err == nil {
			names = append(names, e.Name())
			bytes += size
		}
	}
	return names, bytes
}

// PartialPrefix starts the names of partial downloads in <root>/tmp; the
// downloader holds an exclusive flock on the file while it works on it.
const PartialPrefix = "partial-"

// locked reports whether some process holds a flock on the file at p.
func locked(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return true // cannot tell: keep it
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
