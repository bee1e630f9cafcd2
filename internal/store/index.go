package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/reference"
)

func emptyIndex() ocispec.Index {
	return ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
}

// readIndex parses index.json strictly enough to refuse a malformed one with
// an error that names the file.
func (s *Store) readIndex() (ocispec.Index, error) {
	b, err := bounded.ReadFile(s.indexPath(), maxJSONSize)
	if errors.Is(err, os.ErrNotExist) {
		return emptyIndex(), nil
	}
	if err != nil {
		return ocispec.Index{}, fmt.Errorf("read %s: %w", s.indexPath(), err)
	}
	idx, err := ParseIndex(b)
	if err != nil {
		return ocispec.Index{}, fmt.Errorf("%s: %w", s.indexPath(), err)
	}
	return idx, nil
}

// ParseIndex parses and checks an OCI image index.
func ParseIndex(b []byte) (ocispec.Index, error) {
	var idx ocispec.Index
	if len(b) > maxJSONSize {
		return idx, fmt.Errorf("%w: index is %d bytes, more than the %d allowed", ErrCorrupt, len(b), maxJSONSize)
	}
	if err := unmarshalOne(b, &idx); err != nil {
		return idx, fmt.Errorf("%w: not a valid image index: %v", ErrCorrupt, err)
	}
	if idx.SchemaVersion != 2 {
		return idx, fmt.Errorf("%w: image index schemaVersion is %d, expected 2", ErrCorrupt, idx.SchemaVersion)
	}
	for i, d := range idx.Manifests {
		if err := checkDescriptor(d); err != nil {
			return idx, fmt.Errorf("%w: manifests[%d]: %v", ErrCorrupt, i, err)
		}
	}
	return idx, nil
}

// ParseManifest parses and checks an OCI image manifest.
func ParseManifest(b []byte) (ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := unmarshalOne(b, &m); err != nil {
		return m, fmt.Errorf("%w: not a valid image manifest: %v", ErrCorrupt, err)
	}
	if m.SchemaVersion != 2 {
		return m, fmt.Errorf("%w: image manifest schemaVersion is %d, expected 2", ErrCorrupt, m.SchemaVersion)
	}
	if m.MediaType != "" && m.MediaType != ocispec.MediaTypeImageManifest {
		return m, fmt.Errorf("%w: media type %q is not an OCI image manifest", ErrCorrupt, m.MediaType)
	}
	if err := checkDescriptor(m.Config); err != nil {
		return m, fmt.Errorf("%w: config: %v", ErrCorrupt, err)
	}
	for i, l := range m.Layers {
		if err := checkDescriptor(l); err != nil {
			return m, fmt.Errorf("%w: layers[%d]: %v", ErrCorrupt, i, err)
		}
	}
	return m, nil
}

// unmarshalOne decodes exactly one JSON value (no trailing data).
func unmarshalOne(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON document")
	}
	return nil
}

func checkDescriptor(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v", d.Digest, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("negative size %d", d.Size)
	}
	if d.MediaType == "" {
		return errors.New("no media type")
	}
	return nil
}

func (s *Store) writeIndex(idx ocispec.Index) error {
	if s.readOnly {
		return errReadOnly
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteIn(s.tmpDir(), s.indexPath(), b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", s.indexPath(), err)
	}
	return nil
}

// Tag points ref ("name[:tag]") at the manifest desc, replacing any previous
// target of that tag. The manifest blob must already be in the store.
func (s *Store) Tag(ref string, desc ocispec.Descriptor) error {
	name, tag, err := ParseRef(ref)
	if err != nil {
		return err
	}
	full := name + ":" + tag
	if !s.HasBlob(desc.Digest) {
		return &BlobError{Digest: desc.Digest, Problem: "cannot tag a manifest that is not in the store", Err: ErrNotFound}
	}
	return s.withLock(func() error {
		idx, err := s.readIndex()
		if err != nil {
			return err
		}
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if d.Annotations[RefNameAnnotation] != full {
				kept = append(kept, d)
			}
		}
		d := desc
		d.Annotations = map[string]string{}
		for k, v := range desc.Annotations {
			d.Annotations[k] = v
		}
		d.Annotations[RefNameAnnotation] = full
		idx.Manifests = append(kept, d)
		return s.writeIndex(idx)
	})
}

// Untag removes ref from the index. Blobs stay until GC. A ref that breaks
// today's name rules (package reference) is still removed when an entry has
// exactly that name, so tags written by older versions can be cleaned up.
func (s *Store) Untag(ref string) (ocispec.Descriptor, error) {
	full := ref
	name, tag, perr := ParseRef(ref)
	if perr == nil {
		full = name + ":" + tag
	}
	var removed ocispec.Descriptor
	err := s.withLock(func() error {
		idx, err := s.readIndex()
		if err != nil {
			return err
		}
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if d.Annotations[RefNameAnnotation] == full {
				removed = d
				continue
			}
			kept = append(kept, d)
		}
		if removed.Digest == "" && perr != nil {
			return perr
		}
		if removed.Digest == "" {
			return fmt.Errorf("image %s: %w", full, ErrNotFound)
		}
		idx.Manifests = kept
		return s.writeIndex(idx)
	})
	return removed, err
}

// Tagged is one entry of the store's index.
type Tagged struct {
	Name, Tag  string
	Descriptor ocispec.Descriptor
}

// List returns every tagged manifest, sorted by name and tag.
func (s *Store) List() ([]Tagged, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var out []Tagged
	for _, d := range idx.Manifests {
		ref := d.Annotations[RefNameAnnotation]
		if ref == "" {
			continue
		}
		name, tag, err := ParseRef(ref)
		if err != nil {
			name, tag = ref, ""
		}
		out = append(out, Tagged{Name: name, Tag: tag, Descriptor: d})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Tag < out[j].Tag
	})
	return out, nil
}

// Resolve finds the manifest descriptor for a store reference (see package
// reference): "name[:tag]" (tag defaults to latest), "name@sha256:..." or a
// bare "sha256:..." digest. For digest references the manifest blob must be
// in the store.
//
// A short digest (4 to 63 hex digits, with or without "sha256:") names the
// one manifest in the index whose digest starts with it, as podman accepts
// short image IDs; a name or tag of the same spelling wins.
func (s *Store) Resolve(ref string) (ocispec.Descriptor, error) {
	r, err := reference.Parse(ref)
	short, isShort := shortDigest(ref)
	if err != nil {
		if isShort {
			return s.resolveShort(ref, short)
		}
		return ocispec.Descriptor{}, err
	}
	if r.Transport != reference.Store {
		return ocispec.Descriptor{}, fmt.Errorf("image reference %q: want a store NAME[:TAG] or NAME@DIGEST here", ref)
	}
	idx, err := s.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if r.Digest != "" {
		for _, m := range idx.Manifests {
			if m.Digest == r.Digest {
				return m, nil
			}
		}
		p, _ := s.BlobPath(r.Digest)
		st, err := os.Stat(p)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", ref, ErrNotFound)
		}
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: r.Digest, Size: st.Size()}, nil
	}
	full := r.Name + ":" + r.Tag
	for _, m := range idx.Manifests {
		if m.Annotations[RefNameAnnotation] == full {
			return m, nil
		}
	}
	if isShort {
		return s.resolveShort(ref, short)
	}
	return ocispec.Descriptor{}, fmt.Errorf("image %s: %w (see 'vessel images')", full, ErrNotFound)
}

var shortDigestRE = regexp.MustCompile(`^(?:sha256:)?([0-9a-f]{4,63})$`)

// shortDigest returns the hex prefix of a short digest reference.
func shortDigest(ref string) (string, bool) {
	m := shortDigestRE.FindStringSubmatch(ref)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// ErrAmbiguous is returned for a short digest that more than one manifest
// in the store starts with.
var ErrAmbiguous = errors.New("ambiguous short digest")

func (s *Store) resolveShort(ref, prefix string) (ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var found *ocispec.Descriptor
	for i, m := range idx.Manifests {
		if !strings.HasPrefix(m.Digest.Encoded(), prefix) {
			continue
		}
		if found != nil && found.Digest != m.Digest {
			return ocispec.Descriptor{}, fmt.Errorf("image %s: %w: %s and %s both start with it (give more digits)", ref, ErrAmbiguous, found.Digest, m.Digest)
		}
		found = &idx.Manifests[i]
	}
	if found == nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w (no tag of that name, and no image digest starts with it; see 'vessel images')", ref, ErrNotFound)
	}
	d := *found
	d.Annotations = nil // the digest's, not one of its tags'
	return d, nil
}

// ResolveLayoutTag finds the manifest an oci:DIR:TAG reference names in an
// OCI layout: the index entry whose org.opencontainers.image.ref.name is
// exactly tag (as skopeo and other tools write it), else tag read as a
// store reference (a vessel store's "name:tag" entries, or a digest).
func (s *Store) ResolveLayoutTag(tag string) (ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, m := range idx.Manifests {
		if m.Annotations[RefNameAnnotation] == tag {
			return m, nil
		}
	}
	if r, err := reference.Parse(tag); err == nil && r.Transport == reference.Store {
		return s.Resolve(tag)
	}
	return ocispec.Descriptor{}, fmt.Errorf("tag %q: %w", tag, ErrNotFound)
}

// Manifest reads, verifies and parses the image manifest with digest d.
func (s *Store) Manifest(d digest.Digest) (ocispec.Manifest, error) {
	b, err := s.ReadBlob(ocispec.Descriptor{Digest: d})
	if err != nil {
		return ocispec.Manifest{}, err
	}
	m, err := ParseManifest(b)
	if err != nil {
		return m, &BlobError{Digest: d, Problem: err.Error(), Err: ErrCorrupt}
	}
	return m, nil
}

// Config reads, verifies and parses an image config blob.
func (s *Store) Config(desc ocispec.Descriptor) (ocispec.Image, error) {
	var img ocispec.Image
	b, err := s.ReadBlob(desc)
	if err != nil {
		return img, err
	}
	if err := unmarshalOne(b, &img); err != nil {
		return img, &BlobError{Digest: desc.Digest, Problem: "not a valid image config: " + err.Error(), Err: ErrCorrupt}
	}
	return img, nil
}

// ListAll returns every entry of index.json, tagged or not.
func (s *Store) ListAll() ([]ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	return idx.Manifests, nil
}
