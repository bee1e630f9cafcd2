// Package image makes, reads and verifies vessel images in a store: an OCI
// image manifest whose layers are verified filesystem images (see package
// layer), with a standard OCI config.
//
// Create builds layers from directories; Convert turns a standard OCI image
// with tar layers into one; Inspect and Verify read what a store holds,
// checking every digest on the way. The store package below this one knows
// only blobs and tags.
package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
)

// ErrNoLayerDirs: Create was given no layer directory.
var ErrNoLayerDirs = errors.New("give at least one layer directory")

// CreateOptions control Create.
type CreateOptions struct {
	Format          layer.Format
	SourceDateEpoch *int64              // reproducible builds: clamp times, fix the created date
	Config          ocispec.ImageConfig // entrypoint, env, ...
	Progress        func(step string)   // called before each long step (may be nil)
	// Platform of the image (what its files run on); zero: this machine's.
	Platform ocispec.Platform
	// Written, if set, reports a layer being built: its number (from 1)
	// and the bytes of filesystem image written so far (see
	// layer.BuildOptions.Written).
	Written func(layer int, n int64)
	// Hashed, if set, reports the hashing of a built layer (digest and
	// dm-verity tree; see layer.BuildOptions.Hashed).
	Hashed func(layer int, done, total int64)
}

// Created is the result of Create or Convert.
type Created struct {
	Ref        string               `json:"ref"`
	Descriptor ocispec.Descriptor   `json:"descriptor"`
	Layers     []ocispec.Descriptor `json:"layers"`
}

// Create builds one verified layer per directory (lowest first), writes the
// config and manifest and tags the result as ref. Nothing is tagged unless
// every step succeeded.
func Create(ctx context.Context, s *store.Store, ref string, dirs []string, opt CreateOptions) (*Created, error) {
	if _, _, err := store.ParseRef(ref); err != nil {
		return nil, err
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("create image: %w", ErrNoLayerDirs)
	}
	done, err := s.Writer()
	if err != nil {
		return nil, err
	}
	defer done()
	var layers []ocispec.Descriptor
	for i, dir := range dirs {
		if opt.Progress != nil {
			opt.Progress(fmt.Sprintf("layer %d/%d: %s", i+1, len(dirs), dir))
		}
		bo := layer.BuildOptions{Format: opt.Format, SourceDateEpoch: opt.SourceDateEpoch}
		if opt.Written != nil {
			n := i + 1
			bo.Written = func(w int64) { opt.Written(n, w) }
		}
		if opt.Hashed != nil {
			n := i + 1
			bo.Hashed = func(done, total int64) { opt.Hashed(n, done, total) }
		}
		d, err := addLayer(ctx, s, dir, bo)
		if err != nil {
			return nil, fmt.Errorf("create %s: layer %d (%s): %w", ref, i+1, dir, err)
		}
		layers = append(layers, d)
	}
	return commit(s, ref, layers, opt.Config, opt.Platform, created(opt.SourceDateEpoch), nil)
}

// addLayer builds a layer from dir straight into the store.
func addLayer(ctx context.Context, s *store.Store, dir string, opt layer.BuildOptions) (ocispec.Descriptor, error) {
	tmp, err := s.TempDir("layer-*")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.RemoveAll(tmp)
	b, err := layer.Build(ctx, dir, tmp+"/blob", opt)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := s.PutBlobFile(b.Path, b.Descriptor.Digest); err != nil {
		return ocispec.Descriptor{}, err
	}
	return b.Descriptor, nil
}

func created(epoch *int64) time.Time {
	if epoch != nil {
		return time.Unix(*epoch, 0).UTC()
	}
	return time.Now().UTC().Truncate(time.Second)
}

// commit writes config and manifest for layers and tags them as ref.
func commit(s *store.Store, ref string, layers []ocispec.Descriptor, cfg ocispec.ImageConfig, p ocispec.Platform, when time.Time, history []ocispec.History) (*Created, error) {
	return Commit(s, CommitOptions{
		Ref: ref, Layers: layers, Config: cfg, Created: when, History: history, Platform: p,
	})
}

func putJSON(s *store.Store, mediaType string, v any) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return s.PutBlob(bytes.NewReader(b), ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))})
}
