package store

import (
	"encoding/json"
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/platform"
)

// ResolveImage is Resolve down to one image manifest: when ref names a
// multi-platform image index (vessel build --arch amd64,arm64, or a pulled
// multi-arch image), the entry for p is picked (zero p: this machine's
// platform). A ref that names an image manifest is returned as it is; the
// caller checks its config's platform (platform.OfConfig).
func (s *Store) ResolveImage(ref string, p ocispec.Platform) (ocispec.Descriptor, error) {
	d, err := s.Resolve(ref)
	if err != nil {
		return d, err
	}
	b, err := s.ReadBlob(ocispec.Descriptor{Digest: d.Digest, Size: d.Size})
	if err != nil {
		return d, fmt.Errorf("image %s: %w", ref, err)
	}
	if d.MediaType != ocispec.MediaTypeImageIndex && d.MediaType != DockerManifestList {
		// A digest reference to a blob that index.json does not list is
		// resolved as an image manifest: look at what it is.
		var probe struct {
			MediaType string            `json:"mediaType"`
			Manifests []json.RawMessage `json:"manifests"`
		}
		if json.Unmarshal(b, &probe) != nil || (probe.MediaType != ocispec.MediaTypeImageIndex && probe.MediaType != DockerManifestList && (probe.MediaType != "" || probe.Manifests == nil)) {
			return d, nil
		}
		d.MediaType = ocispec.MediaTypeImageIndex
	}
	if p.Architecture == "" {
		p = platform.Host()
	}
	idx, err := ParseIndex(b)
	if err != nil {
		return d, fmt.Errorf("image %s: %w", ref, err)
	}
	m, err := platform.Pick(idx, p)
	if err != nil {
		return d, fmt.Errorf("image %s: %w", ref, err)
	}
	return m, nil
}

// Platforms lists the platforms of the index that ref names (nil for an
// image manifest).
func (s *Store) Platforms(ref string) ([]ocispec.Platform, error) {
	d, err := s.Resolve(ref)
	if err != nil || (d.MediaType != ocispec.MediaTypeImageIndex && d.MediaType != DockerManifestList) {
		return nil, err
	}
	b, err := s.ReadBlob(ocispec.Descriptor{Digest: d.Digest, Size: d.Size})
	if err != nil {
		return nil, fmt.Errorf("image %s: index: %w", ref, err)
	}
	idx, err := ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	var out []ocispec.Platform
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.OS != "unknown" {
			out = append(out, *m.Platform)
		}
	}
	return out, nil
}

// ErrWrongPlatform means an image is for another platform than the one
// asked for.
var ErrWrongPlatform = errors.New("image for another platform")

// CheckPlatform reads the config of the image manifest d and checks that
// it declares platform p (zero p: this machine's).
func (s *Store) CheckPlatform(d ocispec.Descriptor, p ocispec.Platform) error {
	if p.Architecture == "" {
		p = platform.Host()
	}
	m, err := s.Manifest(d.Digest)
	if err != nil {
		return err
	}
	c, err := s.Config(m.Config)
	if err != nil {
		return err
	}
	if have := platform.OfConfig(c); !platform.Match(p, have) {
		return fmt.Errorf("%w: %s is for %s, not %s", ErrWrongPlatform, d.Digest, platform.String(have), platform.String(p))
	}
	return nil
}

// PlatformImages resolves image references for one platform: a
// multi-platform index gives its entry for Platform, and an image for
// another platform is refused (ErrWrongPlatform). It is what a system
// manifest for one architecture is built from (manifest.Images).
type PlatformImages struct {
	*Store
	Platform ocispec.Platform // zero: this machine's
}

// Resolve is ResolveImage for p.Platform, with the platform checked.
func (p PlatformImages) Resolve(ref string) (ocispec.Descriptor, error) {
	d, err := p.Store.ResolveImage(ref, p.Platform)
	if err != nil {
		return d, err
	}
	if err := p.Store.CheckPlatform(d, p.Platform); err != nil {
		return d, fmt.Errorf("image %s: %w", ref, err)
	}
	return d, nil
}
