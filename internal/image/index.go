package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/store"
)

// WriteIndex stores an OCI image index over the image manifests ms, in
// that order, each entry labelled with the platform its config declares.
// Two images for the same platform are refused. Equal inputs give equal
// index digests.
func WriteIndex(s *store.Store, ms []ocispec.Descriptor) (ocispec.Descriptor, error) {
	if len(ms) == 0 {
		return ocispec.Descriptor{}, errors.New("image index: no images")
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, m := range ms {
		img, err := ReadDescriptor(s, m, "")
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("image index: %w", err)
		}
		p := platform.OfConfig(img.Config())
		for _, o := range idx.Manifests {
			if platform.Match(*o.Platform, p) {
				return ocispec.Descriptor{}, fmt.Errorf("image index: %s and %s are both for %s", o.Digest, m.Digest, platform.String(p))
			}
		}
		d := img.Descriptor()
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d.Digest, Size: d.Size, Platform: &p})
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return s.PutBlob(bytes.NewReader(b), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(b), Size: int64(len(b))})
}

// Index combines the images refs (each for one platform; an index among
// them contributes all its images) into one multi-platform image index
// tagged as ref.
func Index(s *store.Store, ref string, refs []string) (*Created, error) {
	if _, _, err := store.ParseRef(ref); err != nil {
		return nil, err
	}
	done, err := s.Writer()
	if err != nil {
		return nil, err
	}
	defer done()
	var ms []ocispec.Descriptor
	for _, r := range refs {
		ps, err := s.Platforms(r)
		if err != nil {
			return nil, err
		}
		if len(ps) == 0 {
			d, err := s.Resolve(r)
			if err != nil {
				return nil, err
			}
			ms = append(ms, d)
			continue
		}
		for _, p := range ps {
			d, err := s.ResolveImage(r, p)
			if err != nil {
				return nil, err
			}
			ms = append(ms, d)
		}
	}
	d, err := WriteIndex(s, ms)
	if err != nil {
		return nil, err
	}
	if err := s.Tag(ref, d); err != nil {
		return nil, err
	}
	return &Created{Ref: ref, Descriptor: d, Layers: []ocispec.Descriptor{}}, nil
}
