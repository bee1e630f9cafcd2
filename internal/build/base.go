package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
)

// BasesDir is where docker bases are pulled to (an OCI layout under the
// store root) before they are converted; blobs already there are not
// downloaded again.
const BasesDir = "build-bases"

// base resolves img's base (mount.Empty for scratch), converting tar, oci and docker bases to
// verified layers once (the conversion is cached by source digest, layer
// format and SOURCE_DATE_EPOCH).
func (b *builder) base(ctx context.Context, i int, img *recipe.Image) (_ *mount.Image, err error) {
	from := img.From
	switch from.Type {
	case recipe.Scratch:
		return mount.Empty("scratch"), nil
	case recipe.Built:
		r := b.done[from.Tag]
		if r == nil {
			return nil, fmt.Errorf("base image %q is not built yet", from.Tag)
		}
		return b.resolve(r.Descriptor)
	case recipe.Tar:
		path := from.URL
		if strings.HasPrefix(from.URL, "http://") || strings.HasPrefix(from.URL, "https://") {
			// downloaded like an http(s) import: cached by URL, revalidated
			b.event(i, StatusBase, "", "fetch "+from.URL)
			if path, err = b.fetch.fetch(ctx, recipe.Import{Source: from.URL, Hash: from.Hash}); err != nil {
				return nil, fmt.Errorf("tar base %s: %w", from.URL, err)
			}
		}
		if from.FromImage != "" {
			// stacker://IMAGE/PATH: a tarball inside an image built earlier,
			// read from that image mounted verified, for this step only.
			src := &sources{b: b, ctx: ctx}
			defer func() {
				if cerr := src.close(); cerr != nil {
					err = errors.Join(err, cerr)
				}
			}()
			if path, err = src.resolve(from.FromImage, from.ImagePath); err != nil {
				return nil, fmt.Errorf("tar base %s: %w", from.URL, err)
			}
		}
		sum, err := fileSHA256(path)
		if err != nil {
			return nil, fmt.Errorf("tar base %s: %w", from.URL, err)
		}
		if from.Hash != "" && sum != from.Hash {
			return nil, fmt.Errorf("tar base %s: %w", from.URL, &recipe.HashMismatchError{Expected: from.Hash, Actual: sum})
		}
		return b.converted(ctx, i, img, "tar", sum, from.URL, func(opt image.ConvertOptions) (*image.Created, error) {
			return image.FromTar(ctx, b.s, path, opt)
		})
	case recipe.OCI:
		dir, tag := from.Layout()
		return b.layoutBase(ctx, i, img, "oci", image.Source{Dir: dir, Tag: tag}, from.URL)
	case recipe.Docker:
		if b.opt.Registry == nil {
			return nil, errors.New("docker bases need a registry client")
		}
		ref, err := registry.ParseReference(from.URL)
		if err != nil {
			return nil, err
		}
		c, err := b.opt.Registry(from.Insecure)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(b.s.Root(), BasesDir)
		h := sha256.Sum256([]byte(from.URL))
		tag := "base-" + hex.EncodeToString(h[:8])
		b.event(i, StatusBase, "", "pull "+from.URL)
		if _, err := c.Copy(ctx, registry.Registry(ref), registry.Layout(dir, tag)); err != nil {
			return nil, fmt.Errorf("pull %s: %w", from.URL, err)
		}
		return b.layoutBase(ctx, i, img, "docker", image.Source{Dir: dir, Tag: tag}, from.URL)
	}
	return nil, fmt.Errorf("unknown base type %q", from.Type)
}

// layoutBase converts the image of src for img's platform (picked from a
// multi-platform index).
func (b *builder) layoutBase(ctx context.Context, i int, img *recipe.Image, kind string, src image.Source, name string) (*mount.Image, error) {
	md, err := image.SourceManifest(src, imagePlatform(img))
	if err != nil {
		return nil, fmt.Errorf("%s base %s: %w", kind, name, err)
	}
	m, cfg, err := image.SourceImage(src, imagePlatform(img))
	if err != nil {
		return nil, fmt.Errorf("%s base %s: %w", kind, name, err)
	}
	if len(m.Layers) == 0 {
		// An image with a config and no layers (umoci new): an empty root
		// with that config, nothing to convert or verify.
		return mount.EmptyWithConfig(name, cfg), nil
	}
	return b.converted(ctx, i, img, kind, md.Digest.String(), name, func(opt image.ConvertOptions) (*image.Created, error) {
		return image.ConvertUntagged(ctx, b.s, src, opt)
	})
}

// converted returns the cached conversion of a base identified by
// (kind, id) for img's platform, converting it first on a miss.
func (b *builder) converted(ctx context.Context, i int, img *recipe.Image, kind, id, name string, convert func(image.ConvertOptions) (*image.Created, error)) (*mount.Image, error) {
	p := imagePlatform(img)
	key := digest.FromString("vessel-build-base/v1\x00" + kind + "\x00" + id + "\x00" + b.opt.Format.MediaType() + "\x00" + b.sde + "\x00" + platform.String(p))
	if d, ok, err := b.cache.Image(key, b.s); err != nil {
		return nil, err
	} else if ok {
		if bi, err := b.resolve(d); err == nil {
			return bi, nil
		}
	}
	b.event(i, StatusBase, "", "convert "+kind+" base "+name+" to verified layers")
	res, err := convert(image.ConvertOptions{Format: b.opt.Format, SourceDateEpoch: b.opt.SourceDateEpoch, Platform: p})
	if err != nil {
		return nil, fmt.Errorf("convert %s base %s: %w", kind, name, err)
	}
	if err := b.cache.PutImage(key, res.Descriptor); err != nil {
		return nil, err
	}
	return b.resolve(res.Descriptor)
}

// resolve reads a stored image as a base: the build chose it, so it is
// checked as a local image (mount.LocalImage).
func (b *builder) resolve(d ocispec.Descriptor) (*mount.Image, error) {
	return mount.LocalImage(b.s, d.Digest.String())
}

// imagePlatform is the platform img is built for.
func imagePlatform(img *recipe.Image) ocispec.Platform {
	arch := img.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	return platform.Normalize(ocispec.Platform{OS: img.OS, Architecture: arch})
}

// checkBasePlatform refuses a base built for another platform than img.
func checkBasePlatform(img *recipe.Image, base *mount.Image) error {
	if base.Image() == nil { // scratch
		return nil
	}
	want, have := imagePlatform(img), platform.OfConfig(base.Config())
	if !platform.Match(want, have) {
		return fmt.Errorf("the base is a %s image and %s is built for %s (set arch: to match, or pick a base for %s)", platform.String(have), img.Name, platform.String(want), platform.String(want))
	}
	return nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close() // read-only
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sources mounts images built earlier, read-only, for stacker:// imports,
// and unmounts them when the step is done.
type sources struct {
	b      *builder
	ctx    context.Context
	mounts map[string]string // image name -> mount target
	ids    []string
	dirs   []string
}

func (r *sources) resolve(name, p string) (string, error) {
	if name == "" { // an http(s) import, fetched before the keys
		if hp := r.b.fetch.path(p); hp != "" {
			return hp, nil
		}
		return "", fmt.Errorf("%s was not downloaded", p)
	}
	root, ok := r.mounts[name]
	if !ok {
		built := r.b.done[name]
		if built == nil {
			return "", fmt.Errorf("image %q is not built yet", name)
		}
		mi, err := mount.LocalImage(r.b.s, built.Descriptor.Digest.String())
		if err != nil {
			return "", err
		}
		dir, err := r.b.tempDir("src-*")
		if err != nil {
			return "", err
		}
		r.dirs = append(r.dirs, dir)
		root = filepath.Join(dir, "root")
		id := fmt.Sprintf("build-%d-src-%d", os.Getpid(), len(r.ids)+1)
		if _, err := r.b.opt.Mounts.Mount(r.ctx, mi, id, root, mount.Self(), mount.Options{}); err != nil {
			return "", fmt.Errorf("mount %s: %w", name, err)
		}
		r.ids = append(r.ids, id)
		if r.mounts == nil {
			r.mounts = map[string]string{}
		}
		r.mounts[name] = root
	}
	return inRoot(root, p)
}

func (r *sources) close() error {
	var errs []error
	for _, id := range r.ids {
		if err := r.b.opt.Mounts.Unmount(id); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", id, err))
		}
	}
	if len(errs) == 0 {
		for _, d := range r.dirs {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	r.ids, r.dirs, r.mounts = nil, nil, nil
	return errors.Join(errs...)
}

// inRoot resolves p inside root as if root were "/": symlinks (absolute
// or relative) are followed but never leave root. The last component is
// resolved too.
func inRoot(root, p string) (string, error) {
	const maxLinks = 40
	cur := "/"
	rest := strings.Split(filepath.Clean("/"+p), "/")
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: too many symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, cur), nil
}
