package manifest

import (
	"errors"
	"fmt"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
)

// Images is what Build and CheckImages need from an image store
// (store.Store implements it).
type Images interface {
	// Resolve maps "name[:tag]" or "name@sha256:..." to the image manifest
	// descriptor; errors match store.ErrNotFound for unknown images.
	Resolve(ref string) (ocispec.Descriptor, error)
	// Manifest reads and verifies (digest) the image manifest blob d.
	Manifest(d digest.Digest) (ocispec.Manifest, error)
}

// BlobChecker is implemented by stores that can tell whether a blob is
// present (store.Store does). CheckImages uses it to find missing layers.
type BlobChecker interface {
	HasBlob(d digest.Digest) bool
}

// ErrImage is wrapped by CheckImages errors about an image that is not what
// the manifest pins (missing, wrong size, no verity root hash, missing layer).
var ErrImage = errors.New("image check failed")

// Errors of Build about the product (the CLI adds which flags to use).
var (
	ErrProductMismatch = errors.New("product mismatch")
	ErrProductName     = errors.New("product needs an id")
)

// ErrPortsUnsupported is returned by Build for a service with ports:
// publishing ports from a private network namespace is not implemented by
// vessel up, so a manifest with them would be signed and then refused.
var ErrPortsUnsupported = errors.New("publishing ports (network: private) is not implemented yet by vessel up; use network: host and let the service listen on its port")

// BuildOptions configure Build.
type BuildOptions struct {
	// ProductID is the product UUID, required when system.yaml names the
	// product by name.
	ProductID string
}

// Build pins every image reference of sys to the digest the store resolves
// it to and returns the manifest. Each image must have filesystem layers
// with verity root hashes.
func Build(sys *System, images Images, opts BuildOptions) (*Manifest, error) {
	m := &Manifest{MediaType: MediaType, Version: sys.Version, Services: []Service{}}
	switch {
	case uuidLike(sys.Product):
		m.Product = lower(sys.Product)
		if opts.ProductID != "" && lower(opts.ProductID) != m.Product {
			return nil, fmt.Errorf("%w: product %s in system.yaml differs from the product id %s given", ErrProductMismatch, sys.Product, opts.ProductID)
		}
	case sys.Product == "":
		return nil, errors.New("system.yaml: product is required (a name or a UUID)")
	default:
		m.ProductName = sys.Product
		if opts.ProductID == "" {
			return nil, fmt.Errorf("%w: product %q is a name, and no product id was given to pin it", ErrProductName, sys.Product)
		}
		m.Product = lower(opts.ProductID)
	}
	if sys.Version < 1 {
		return nil, fmt.Errorf("system.yaml: version must be a positive integer, got %d", sys.Version)
	}
	m.HealthSeconds = sys.HealthSeconds
	if sys.Hostfs != "" {
		im, err := pin(sys.Hostfs, images)
		if err != nil {
			return nil, fmt.Errorf("hostfs: %w", err)
		}
		m.Hostfs = &im
	}
	for i, s := range sys.Services {
		if s.Image == "" {
			return nil, fmt.Errorf("services[%d] (%s): image is required", i, s.Name)
		}
		im, err := pin(s.Image, images)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", s.Name, err)
		}
		svc := Service{
			Name: s.Name, Image: im, Command: s.Command, Args: s.Args, User: s.User,
			Restart: s.Restart, Network: s.Network, ReadOnly: s.ReadOnly, Init: s.Init,
			UserNS: s.UserNS, Health: s.Health,
		}
		if svc.Restart == "" {
			svc.Restart = RestartAlways
		}
		if svc.Network == "" {
			svc.Network = NetworkNone
			if len(s.Ports) > 0 {
				svc.Network = NetworkPrivate
			}
		}
		keys := make([]string, 0, len(s.Env))
		for k := range s.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			svc.Env = append(svc.Env, k+"="+s.Env[k])
		}
		for _, c := range s.Capabilities.Names {
			n, err := NormalizeCapability(c)
			if err != nil {
				return nil, fmt.Errorf("service %q: %w", s.Name, err)
			}
			svc.Capabilities = append(svc.Capabilities, n)
		}
		// Least privilege unless declared: no key or an empty list is none;
		// "default" is the runtime's default set (an empty list in the
		// manifest, its meaning before noCapabilities existed).
		svc.NoCapabilities = !s.Capabilities.Default && len(svc.Capabilities) == 0
		for _, p := range s.Ports {
			port, err := parsePort(p)
			if err != nil {
				return nil, fmt.Errorf("service %q: %w", s.Name, err)
			}
			svc.Ports = append(svc.Ports, port)
		}
		if len(svc.Ports) > 0 {
			// The model keeps ports, but vessel up cannot publish them yet:
			// a manifest must not promise what the machine will refuse.
			return nil, fmt.Errorf("service %q: ports %v: %w", s.Name, s.Ports, ErrPortsUnsupported)
		}
		for _, v := range s.Volumes {
			vol, err := parseVolume(v)
			if err != nil {
				return nil, fmt.Errorf("service %q: %w", s.Name, err)
			}
			svc.Volumes = append(svc.Volumes, vol)
		}
		m.Services = append(m.Services, svc)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func pin(ref string, images Images) (Image, error) {
	d, err := images.Resolve(ref)
	if err != nil {
		return Image{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	im := Image{Ref: ref, MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
	if im.MediaType == "" {
		im.MediaType = ocispec.MediaTypeImageManifest
	}
	if err := checkImage(im, images); err != nil {
		return Image{}, err
	}
	return im, nil
}

// CheckImages checks that every image m references is in the store with the
// exact digest (the store verifies it on read), and that each has at least
// one filesystem layer, every layer carries a verity root hash, and (if the
// store is a BlobChecker) every layer blob is present. It defends against
// mix-and-match (an image swapped under a tag) and missing layers.
func CheckImages(m *Manifest, images Images) error {
	for _, im := range m.Images() {
		if err := checkImage(im, images); err != nil {
			return err
		}
	}
	return nil
}

func checkImage(im Image, images Images) error {
	name := im.Ref
	if name == "" {
		name = im.Digest.String()
	}
	om, err := images.Manifest(im.Digest)
	if err != nil {
		return fmt.Errorf("%w: image %s (%s): %w", ErrImage, name, im.Digest, err)
	}
	if om.MediaType != "" && om.MediaType != im.MediaType {
		return fmt.Errorf("%w: image %s: store has media type %s, manifest pins %s", ErrImage, name, om.MediaType, im.MediaType)
	}
	if len(om.Layers) == 0 {
		return fmt.Errorf("%w: image %s has no layers", ErrImage, name)
	}
	bc, _ := images.(BlobChecker)
	for i, l := range om.Layers {
		if _, err := layer.VerityRoot(l); err != nil {
			return fmt.Errorf("%w: image %s layer %d: %w", ErrImage, name, i, err)
		}
		if bc != nil && !bc.HasBlob(l.Digest) {
			return fmt.Errorf("%w: image %s layer %d (%s) is missing from the store", ErrImage, name, i, l.Digest)
		}
	}
	return nil
}

func uuidLike(s string) bool { return uuidRE.MatchString(lower(s)) }

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}
