// Package mount turns a stored image into a mounted root filesystem without
// extracting anything: every layer blob is attached read-only, checked
// against its dm-verity root hash, mounted as squashfs or erofs and stacked
// with overlayfs under a fresh writable layer.
//
// # Only verified images can be mounted
//
// Manager.Mount and Manager.Plan take an *Image, and an *Image has no
// exported fields: code outside this package can only get one from the
// constructors below, so code that mounts an image that passed neither
// path does not compile (TestUnverifiedImageDoesNotCompile proves it). The
// two paths differ only in what vouches for the manifest digest:
//
//   - SystemImage: an image listed in a system manifest that passed
//     trust.Verify (a *trust.VerifiedManifest). The signature vouches for
//     the digest, media type and size. Used by the supervisor (`vessel up`)
//     and, later, boot.
//   - LocalImage: an image a user chose by name (or digest) from the local
//     store. The user's choice vouches for the digest. Used by `vessel run`,
//     `vessel mount` and the bases and stacker:// sources of `vessel build`.
//
// Both read the manifest and config through digest- and size-checked reads
// and check every layer descriptor before anything is mounted: a squashfs
// or erofs media type, a well-formed sha256 digest, a size that is not 0
// and equals the blob's, a verity root-hash annotation of 64 hex digits,
// a verity superblock that agrees with the filesystem image and the size,
// and no layer twice. The blocks themselves are checked by Manager.Mount
// against that root hash (by dm-verity on every read, or in userspace
// before the first mount). Empty is the one image with no layers (the
// base of `from: scratch` builds): there is nothing to check.
//
// # Pipeline
//
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
// Callers that run containers (package container, the supervisor, vessel
// build) get a root filesystem path from Manager.Mount and never see loop
// devices or layer mounts.
package mount

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// Image is an image that may be mounted: the image model (package image)
// read from the store with every manifest and config read checked against
// its digest, and every layer descriptor checked (see the package
// documentation). Its layers' blocks are checked against their verity root
// hashes by Manager, before or while they are mounted. It is made only by
// LocalImage, SystemImage and Empty; the zero Image is refused by Manager.
type Image struct {
	img    *image.Image // nil for Empty
	name   string
	layers []imageLayer // bottom first
	empty  bool         // made by Empty
	system bool         // made by SystemImage: listed in a verified system manifest
	// emptyConfig is the config of EmptyWithConfig (nil otherwise).
	emptyConfig *ocispec.Image
}

// imageLayer is one layer blob of an Image.
type imageLayer struct {
	digest   digest.Digest
	size     int64
	blob     string // path of the blob in the store
	geometry layer.Geometry
}

// hex is the digest's hex part, used to name per-layer state.
func (l imageLayer) hex() string { return l.digest.Encoded() }

// Name is the reference the image was chosen by (or its digest).
func (img *Image) Name() string { return img.name }

// Image is the image model: manifest, config and layers (nil for Empty).
func (img *Image) Image() *image.Image { return img.img }

// Digest is the image manifest digest ("" for Empty).
func (img *Image) Digest() digest.Digest {
	if img.img == nil {
		return ""
	}
	return img.img.Digest()
}

// Config returns the image config (digest-checked; zero for Empty).
func (img *Image) Config() ocispec.Image {
	if img.img == nil {
		if img.emptyConfig != nil {
			return *img.emptyConfig
		}
		return ocispec.Image{}
	}
	return img.img.Config()
}

// Layers is the number of layers.
func (img *Image) Layers() int { return len(img.layers) }

// valid reports whether img came from one of the constructors.
func (img *Image) valid() error {
	if img == nil || (!img.empty && img.img == nil) {
		return errors.New("mount: image not made by mount.LocalImage, mount.SystemImage or mount.Empty")
	}
	return nil
}

// LocalImage reads the image ref (NAME[:TAG], NAME@DIGEST or a manifest
// digest) that a user chose from the local store s, checking it as the
// package documentation says. It is the constructor for `vessel run`,
// `vessel mount` and build bases; images of a system manifest come from
// SystemImage.
func LocalImage(s *store.Store, ref string) (*Image, error) {
	desc, err := s.ResolveImage(ref, ocispec.Platform{}) // an index: this machine's image
	if err != nil {
		return nil, err
	}
	img, err := open(s, desc, ref)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

// SystemImage reads the image with manifest digest d, which the verified
// system manifest vm must list, from s. The digest, media type and size
// come from the signed manifest; the image is named by its ref there.
func SystemImage(s *store.Store, vm *trust.VerifiedManifest, d digest.Digest) (*Image, error) {
	for _, im := range vm.Images() {
		if im.Digest != d {
			continue
		}
		name := im.Ref
		if name == "" {
			name = d.String()
		}
		img, err := open(s, ocispec.Descriptor{MediaType: im.MediaType, Digest: im.Digest, Size: im.Size}, name)
		if err != nil {
			return nil, fmt.Errorf("image %s (%s): %w", name, d, err)
		}
		// A system manifest is for one architecture (docs/manifest.md): an
		// image that declares another cannot run on this machine.
		if have := platform.OfConfig(img.Config()); have.Architecture != "" && !platform.Match(platform.Host(), have) {
			return nil, fmt.Errorf("image %s (%s): %w: it is for %s, this machine is %s", name, d, store.ErrWrongPlatform, platform.String(have), platform.String(platform.Host()))
		}
		img.system = true
		return img, nil
	}
	return nil, fmt.Errorf("image %s is not listed in system manifest %s", d, vm.Digest())
}

// open reads and checks the image manifest desc points at.
func open(s *store.Store, desc ocispec.Descriptor, name string) (*Image, error) {
	mi, err := image.ReadDescriptor(s, desc, name)
	if err != nil {
		return nil, err
	}
	if err := mi.CheckLayers(); err != nil {
		return nil, err
	}
	img := &Image{img: mi, name: name}
	for i, l := range mi.Layers() {
		il, err := openLayer(s, l.Descriptor())
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
		img.layers = append(img.layers, il)
	}
	return img, nil
}

// openLayer checks the blob of one layer (its descriptor passed
// image.CheckLayers) and locates its verity tree.
func openLayer(s *store.Store, d ocispec.Descriptor) (imageLayer, error) {
	p, err := s.BlobPath(d.Digest)
	if err != nil {
		return imageLayer{}, err
	}
	// Lstat first: opening a FIFO would block, a symlink would be followed.
	if fi, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		return imageLayer{}, fmt.Errorf("%w: blob %s is missing", store.ErrNotFound, d.Digest)
	} else if err != nil {
		return imageLayer{}, err
	} else if !fi.Mode().IsRegular() {
		return imageLayer{}, fmt.Errorf("blob %s is not a regular file (%s)", d.Digest, fi.Mode().Type())
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return imageLayer{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return imageLayer{}, err
	}
	if !fi.Mode().IsRegular() {
		return imageLayer{}, fmt.Errorf("blob %s is not a regular file (%s)", d.Digest, fi.Mode().Type())
	}
	if fi.Size() != d.Size {
		return imageLayer{}, fmt.Errorf("%w: blob %s is %d bytes, its descriptor says %d", store.ErrCorrupt, d.Digest, fi.Size(), d.Size)
	}
	g, err := layer.Locate(f, d) // checks the root-hash annotation's form too
	if err != nil {
		return imageLayer{}, err
	}
	return imageLayer{digest: d.Digest, size: d.Size, blob: p, geometry: g}, nil
}
