package image

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/verity"
)

// Image is the one model of a stored image: its manifest, config and
// layers, read once from the store through digest- and size-checked reads
// (Read). It is plain, immutable data: the accessors return copies. It
// does not check that the layers are verified filesystem layers (Verify
// does, and package mount's constructors do before anything is mounted),
// so `vessel inspect` can show any image the store holds.
type Image struct {
	ref      string
	desc     ocispec.Descriptor // of the image manifest
	manifest ocispec.Manifest
	config   ocispec.Image
	layers   []Layer
}

// Layer is one layer of an Image, as its manifest describes it.
type Layer struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	RootHash  string        `json:"verityRootHash,omitempty"` // as annotated; not checked for form
	desc      ocispec.Descriptor
}

// Descriptor returns the layer's descriptor in the manifest (with its
// annotations).
func (l Layer) Descriptor() ocispec.Descriptor {
	d := l.desc
	d.Annotations = maps.Clone(d.Annotations)
	return d
}

// Read reads the image ref (NAME[:TAG], NAME@DIGEST or a manifest digest)
// from s.
//
// A ref that names a multi-platform index reads this machine's image from
// it (store.ResolveImage).
func Read(s *store.Store, ref string) (*Image, error) {
	desc, err := s.ResolveImage(ref, ocispec.Platform{})
	if err != nil {
		return nil, err
	}
	img, err := ReadDescriptor(s, desc, ref)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

// ReadDescriptor reads the image whose manifest desc describes from s and
// names it ref (the manifest digest when ref is empty). The manifest must
// match desc's digest and, when desc has one, its size.
func ReadDescriptor(s *store.Store, desc ocispec.Descriptor, ref string) (*Image, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("manifest digest %q: %w", desc.Digest, err)
	}
	if ref == "" {
		ref = desc.Digest.String()
	}
	b, err := s.ReadBlob(ocispec.Descriptor{Digest: desc.Digest, Size: desc.Size})
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	m, err := store.ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	cfg, err := s.Config(m.Config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if desc.Size == 0 {
		desc.Size = int64(len(b))
	}
	img := &Image{ref: ref, desc: desc, manifest: m, config: cfg}
	for _, l := range m.Layers {
		rh, _ := layer.RootHash(l)
		img.layers = append(img.layers, Layer{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size, RootHash: rh, desc: l})
	}
	return img, nil
}

// Ref is the reference the image was read by.
func (img *Image) Ref() string { return img.ref }

// Digest is the image manifest digest.
func (img *Image) Digest() digest.Digest { return img.desc.Digest }

// Descriptor is the image manifest's descriptor.
func (img *Image) Descriptor() ocispec.Descriptor { return img.desc }

// Size is the bytes of manifest, config and layers.
func (img *Image) Size() int64 {
	n := img.desc.Size + img.manifest.Config.Size
	for _, l := range img.layers {
		n += l.Size
	}
	return n
}

// Manifest returns a copy of the image manifest.
func (img *Image) Manifest() ocispec.Manifest {
	m := img.manifest
	m.Layers = make([]ocispec.Descriptor, len(img.layers))
	for i, l := range img.layers {
		m.Layers[i] = l.Descriptor()
	}
	m.Annotations = maps.Clone(m.Annotations)
	return m
}

// Config returns a copy of the image config. (Its slices are shared with
// the Image: do not modify them.)
func (img *Image) Config() ocispec.Image { return img.config }

// Layers returns the layers, bottom first.
func (img *Image) Layers() []Layer { return slices.Clone(img.layers) }

// MarshalJSON gives what `vessel inspect --json` prints.
func (img *Image) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Ref      string           `json:"ref"`
		Digest   digest.Digest    `json:"digest"`
		Size     int64            `json:"size"` // manifest + config + layers
		Manifest ocispec.Manifest `json:"manifest"`
		Config   ocispec.Image    `json:"config"`
		Layers   []Layer          `json:"layers"`
	}{img.ref, img.Digest(), img.Size(), img.manifest, img.config, img.layers})
}

// LayerResult is the outcome of verifying one layer.
type LayerResult struct {
	Index    int           `json:"index"`
	Digest   digest.Digest `json:"digest"`
	RootHash string        `json:"verityRootHash"`
	Blocks   uint64        `json:"dataBlocks"`
	Err      string        `json:"error,omitempty"`
}

// VerifyError names the image and layer that failed verification.
type VerifyError struct {
	Ref    string
	Layer  int // 1-based; 0 for the manifest or config
	Digest digest.Digest
	Err    error
}

func (e *VerifyError) Error() string {
	if e.Layer == 0 {
		return fmt.Sprintf("image %s: %v", e.Ref, e.Err)
	}
	return fmt.Sprintf("image %s: layer %d (%s): %v", e.Ref, e.Layer, e.Digest, e.Err)
}
func (e *VerifyError) Unwrap() error { return e.Err }

// ErrUnverifiable means a layer is not a verified filesystem layer (a tar
// layer, or one without a verity root hash).
var ErrUnverifiable = errors.New("not a verified layer")

// Verify checks the manifest and config digests, then every layer: its blob
// digest and size, and every block against its verity tree. progress, when
// not nil, gets each layer's result as it completes. The first failure is
// returned as a *VerifyError.
func Verify(s *store.Store, ref string, progress func(LayerResult)) ([]LayerResult, error) {
	img, err := Read(s, ref)
	if err != nil {
		return nil, &VerifyError{Ref: ref, Err: err}
	}
	// What a mount would refuse before reading a blob, verify refuses too.
	if err := img.CheckLayers(); err != nil {
		var le *LayerError
		if errors.As(err, &le) {
			return nil, &VerifyError{Ref: ref, Layer: le.Index, Digest: le.Digest, Err: le.Err}
		}
		return nil, &VerifyError{Ref: ref, Err: err}
	}
	var results []LayerResult
	for i, l := range img.manifest.Layers {
		r := LayerResult{Index: i + 1, Digest: l.Digest}
		r.RootHash, _ = layer.RootHash(l)
		blocks, err := verifyLayer(s, l)
		r.Blocks = blocks
		if err != nil {
			r.Err = err.Error()
		}
		results = append(results, r)
		if progress != nil {
			progress(r)
		}
		if err != nil {
			return results, &VerifyError{Ref: ref, Layer: i + 1, Digest: l.Digest, Err: err}
		}
	}
	return results, nil
}

func verifyLayer(s *store.Store, l ocispec.Descriptor) (uint64, error) {
	if _, err := layer.ParseMediaType(l.MediaType); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnverifiable, err)
	}
	if _, err := layer.VerityRoot(l); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnverifiable, err)
	}
	if err := s.VerifyBlob(l); err != nil {
		return 0, err
	}
	f, err := s.OpenBlobFile(l) // a regular file, never a FIFO or a link
	if err != nil {
		return 0, err
	}
	defer f.Close()
	g, err := layer.Locate(f, l)
	if err != nil {
		return 0, err
	}
	return g.Params.DataBlocks, verity.Verify(f, f, g.Params, g.Root)
}

// LayerError names the layer (1-based) a check failed on.
type LayerError struct {
	Index  int
	Digest digest.Digest
	Err    error
}

func (e *LayerError) Error() string {
	return fmt.Sprintf("layer %d (%s): %v", e.Index, e.Digest, e.Err)
}
func (e *LayerError) Unwrap() error { return e.Err }

// ErrNoLayers means an image has no layers. Only the in-memory scratch base
// of a build (mount.Empty) is declared empty; a stored image always has at
// least one layer (vessel build gives even an empty step one).
var ErrNoLayers = errors.New("image has no layers (a stored image needs at least one)")

// CheckLayers checks the layer descriptors of img the way every mount does
// before it reads a blob (package mount calls it; so does Verify): at least
// one layer; each a squashfs or erofs media type with a verity root-hash
// annotation of 64 hex digits, a sha256 digest and a size that is not 0;
// no layer twice. The first failure is a *LayerError (or ErrNoLayers).
func (img *Image) CheckLayers() error {
	if len(img.layers) == 0 {
		return ErrNoLayers
	}
	seen := map[digest.Digest]int{}
	for i, l := range img.layers {
		fail := func(err error) error { return &LayerError{Index: i + 1, Digest: l.Digest, Err: err} }
		if _, err := layer.ParseMediaType(l.MediaType); err != nil {
			return fail(fmt.Errorf("%w: %v", ErrUnverifiable, err))
		}
		if err := l.Digest.Validate(); err != nil || l.Digest.Algorithm() != digest.SHA256 {
			return fail(fmt.Errorf("digest %q is not a sha256 digest", l.Digest))
		}
		if l.Size <= 0 {
			return fail(fmt.Errorf("descriptor size is %d: a layer blob holds a filesystem image and its verity tree", l.Size))
		}
		if _, ok := layer.RootHash(l.desc); !ok {
			return fail(fmt.Errorf("%w: %v", ErrUnverifiable, layer.ErrNoVerity))
		}
		if b, err := hex.DecodeString(l.RootHash); err != nil || len(b) != 32 {
			return fail(fmt.Errorf("verity root hash annotation %q is not 64 hex digits", l.RootHash))
		}
		if j, ok := seen[l.Digest]; ok {
			return fail(fmt.Errorf("the same layer as layer %d: an image lists each layer once", j))
		}
		seen[l.Digest] = i + 1
	}
	return nil
}
