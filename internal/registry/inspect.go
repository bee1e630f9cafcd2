package registry

import (
	"context"
	"encoding/json"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/store"
)

// Remote is what Inspect reads of an image in a registry: its manifest
// (or index) with its exact bytes, and for an image manifest its config.
// Nothing is stored; layers are not fetched.
type Remote struct {
	Descriptor ocispec.Descriptor `json:"descriptor"`
	Manifest   json.RawMessage    `json:"manifest"`
	Config     json.RawMessage    `json:"config,omitempty"`
	// Index is set when the reference names an image index (multi-arch):
	// its manifests, one per platform.
	Index *ocispec.Index    `json:"-"`
	Image *ocispec.Manifest `json:"-"`
}

// Inspect reads the manifest ref names, digest-checked, and the config of
// an image manifest (as skopeo inspect does, without pulling layers).
func (c *Client) Inspect(ctx context.Context, ref Reference) (*Remote, error) {
	desc, b, err := c.getManifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	r := &Remote{Descriptor: desc, Manifest: b}
	var probe struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("inspect %s: manifest: %w", ref, err)
	}
	if probe.Manifests != nil {
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("inspect %s: index: %w", ref, err)
		}
		r.Index = &idx
		return r, nil
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("inspect %s: manifest: %w", ref, err)
	}
	r.Image = &m
	cfg, err := c.fetchBytes(ctx, ref, m.Config, store.MaxJSONSize)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: config: %w", ref, err)
	}
	r.Config = cfg
	return r, nil
}
