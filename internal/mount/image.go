// Package mount turns a stored image into a mounted root filesystem without
// extracting anything: every layer blob is attached read-only, checked
// against its dm-verity root hash, mounted as squashfs or erofs and stacked
// with overlayfs under a fresh writable layer.
//
// The work is split in three, following the pipeline:
//
//   - Resolve reads an image from the store through digest-checked reads and
//     returns an *Image: the layer blobs with their verity geometry. Nothing
//     else in this package accepts a layer that did not come from Resolve.
//   - NewPlan computes what will be mounted, as plain data (Plan): a loop
//     device per layer, a dm-verity table when the kernel has device-mapper,
//     the filesystem mount and the overlay. It needs no root and is what the
//     tests compare.
//   - Manager.Mount applies a plan in one Linux-specific step, sharing layer
//     mounts between containers by reference count, and Manager.Unmount
//     undoes it. Without device-mapper each layer is verified in userspace
//     before its first mount, and the result is remembered under /run (so
//     for the current boot only) keyed by blob digest and file identity.
//
// Callers that run containers (package runtime, the supervisor, vessel
// build) get a root filesystem path from Manager.Mount and never see loop
// devices or layer mounts.
package mount

import (
	"errors"
	"fmt"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
)

// Image is an image read from the store with every manifest and config read
// checked against its digest. Its layers carry the verity root hashes from
// that manifest; their blobs are not yet verified (Manager does that before,
// or while, mounting them).
type Image struct {
	Name   string        // the reference it was resolved from
	Digest digest.Digest // image manifest digest
	Config ocispec.Image
	Layers []Layer // bottom first
}

// Layer is one layer blob of a resolved image.
type Layer struct {
	Digest   digest.Digest
	Size     int64
	Blob     string // path of the blob in the store
	Geometry layer.Geometry
	desc     ocispec.Descriptor
}

// Hex is the digest's hex part, used to name per-layer state.
func (l Layer) Hex() string { return l.Digest.Encoded() }

// Resolve reads the image ref (NAME[:TAG] or a manifest digest) from s.
func Resolve(s *store.Store, ref string) (*Image, error) {
	desc, err := s.Resolve(ref)
	if err != nil {
		return nil, err
	}
	img, err := ResolveDescriptor(s, desc)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	img.Name = ref
	return img, nil
}

// ResolveDescriptor reads the image manifest desc points at from s.
func ResolveDescriptor(s *store.Store, desc ocispec.Descriptor) (*Image, error) {
	m, err := s.Manifest(desc.Digest)
	if err != nil {
		return nil, err
	}
	cfg, err := s.Config(m.Config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	img := &Image{Name: desc.Digest.String(), Digest: desc.Digest, Config: cfg}
	if len(m.Layers) == 0 {
		return nil, errors.New("image has no layers")
	}
	for i, d := range m.Layers {
		l, err := resolveLayer(s, d)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, d.Digest, err)
		}
		img.Layers = append(img.Layers, l)
	}
	return img, nil
}

func resolveLayer(s *store.Store, d ocispec.Descriptor) (Layer, error) {
	if _, err := layer.ParseMediaType(d.MediaType); err != nil {
		return Layer{}, err
	}
	p, err := s.BlobPath(d.Digest)
	if err != nil {
		return Layer{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Layer{}, fmt.Errorf("%w: blob %s is missing", store.ErrNotFound, d.Digest)
		}
		return Layer{}, err
	}
	defer f.Close()
	g, err := layer.Locate(f, d)
	if err != nil {
		return Layer{}, err
	}
	return Layer{Digest: d.Digest, Size: d.Size, Blob: p, Geometry: g, desc: d}, nil
}
