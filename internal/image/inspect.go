package image

import (
	"errors"
	"fmt"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/verity"
)

// Info is what Inspect reports about an image.
type Info struct {
	Ref      string           `json:"ref"`
	Digest   digest.Digest    `json:"digest"`
	Size     int64            `json:"size"` // manifest + config + layers
	Manifest ocispec.Manifest `json:"manifest"`
	Config   ocispec.Image    `json:"config"`
	Layers   []LayerInfo      `json:"layers"`
}

// LayerInfo describes one layer.
type LayerInfo struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	RootHash  string        `json:"verityRootHash,omitempty"`
}

// Inspect reads an image's manifest and config (both digest-checked).
func Inspect(s *store.Store, ref string) (*Info, error) {
	desc, err := s.Resolve(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.Manifest(desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest: %w", ref, err)
	}
	cfg, err := s.Config(m.Config)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", ref, err)
	}
	info := &Info{Ref: ref, Digest: desc.Digest, Manifest: m, Config: cfg, Size: desc.Size + m.Config.Size}
	for _, l := range m.Layers {
		rh, _ := layer.RootHash(l)
		info.Layers = append(info.Layers, LayerInfo{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size, RootHash: rh})
		info.Size += l.Size
	}
	return info, nil
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
	info, err := Inspect(s, ref)
	if err != nil {
		return nil, &VerifyError{Ref: ref, Err: err}
	}
	var results []LayerResult
	for i, l := range info.Manifest.Layers {
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
	p, err := s.BlobPath(l.Digest)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(p)
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
