package image

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/reference"
	"github.com/vesselos/vessel/internal/store"
)

// Source is an image in an OCI layout: oci:DIR[:TAG].
type Source struct {
	Dir, Tag string
}

// ParseSource parses "oci:DIR[:TAG]" with package reference's rules (the
// directory ends at the first colon).
func ParseSource(s string) (Source, error) {
	r, err := reference.Parse(s)
	if err != nil {
		return Source{}, err
	}
	if r.Transport != reference.OCI {
		return Source{}, fmt.Errorf("source %q: want an OCI layout, oci:DIR[:TAG]", s)
	}
	return Source{Dir: r.Dir, Tag: r.Tag}, nil
}

// ConvertOptions control Convert.
type ConvertOptions struct {
	Format          layer.Format
	SourceDateEpoch *int64
	Progress        func(step string)
	// Platform picks the image from a multi-platform index (zero: this
	// machine's), and a single-platform source must match it when it is
	// set (zero: any, labelled as the source says). For a tar base it is
	// the platform the image is labelled with (zero: this machine's).
	Platform ocispec.Platform
}

// Convert reads an OCI image from an OCI layout, checking every digest, and
// stores it as ref with one verified filesystem layer per source layer:
//
//   - a tar layer (uncompressed, gzip or zstd) is unpacked and built into a
//     new squashfs or erofs layer: OCI whiteouts become overlay whiteouts,
//     tar entries that escape the root are refused (see layer.Unpack). This
//     needs root to recreate ownership and device nodes.
//   - a layer that already is a verified filesystem image (squashfs or
//     erofs with a verity root-hash annotation, as vessel and stacker write
//     them) is copied as it is, after every block was checked against the
//     root hash its descriptor names; it needs no root.
//
// Mixed images (tar layers below, verified layers above, or any order)
// convert layer by layer: each layer is a filesystem of its own.
func Convert(ctx context.Context, s *store.Store, src Source, ref string, opt ConvertOptions) (*Created, error) {
	if _, _, err := store.ParseRef(ref); err != nil {
		return nil, err
	}
	return convert(ctx, s, src, ref, opt)
}

// convert is Convert; an empty ref stores the result without tagging it.
func convert(ctx context.Context, s *store.Store, src Source, ref string, opt ConvertOptions) (*Created, error) {
	in, err := store.OpenLayout(src.Dir)
	if err != nil {
		return nil, err
	}
	want := wantPlatform(opt.Platform)
	mDesc, err := pickManifest(in, src, want)
	if err != nil {
		return nil, err
	}
	m, err := in.Manifest(mDesc.Digest)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", src.Dir, err)
	}
	cfg, err := in.Config(m.Config)
	if err != nil {
		return nil, fmt.Errorf("source %s: config: %w", src.Dir, err)
	}
	// The platform the converted image is labelled with: the source's
	// own. One asked for (opt.Platform) must match it; a config that names
	// no architecture takes the one wanted.
	have := platform.OfConfig(cfg)
	if cfg.Architecture == "" {
		have = want
	}
	if opt.Platform.Architecture != "" && !platform.Match(want, have) {
		return nil, fmt.Errorf("source %s: the image is for %s, not %s: %w", src.Dir, platform.String(have), platform.String(want), platform.ErrNoMatch)
	}
	done, err := s.Writer()
	if err != nil {
		return nil, err
	}
	defer done()
	for i, l := range m.Layers {
		if _, err := layer.ParseMediaType(l.MediaType); err != nil && os.Geteuid() != 0 {
			return nil, fmt.Errorf("layer %d (%s, %s): convert needs root: tar layers carry file owners and device nodes that only root can recreate (images whose layers are all squashfs or erofs with verity need no root)", i+1, l.Digest, l.MediaType)
		}
	}
	var layers []ocispec.Descriptor
	for i, l := range m.Layers {
		var d ocispec.Descriptor
		if _, ferr := layer.ParseMediaType(l.MediaType); ferr == nil {
			if opt.Progress != nil {
				opt.Progress(fmt.Sprintf("layer %d/%d: %s (%d bytes, verified layer, reused)", i+1, len(m.Layers), l.Digest, l.Size))
			}
			d, err = reuseLayer(ctx, s, in, l)
			if err != nil {
				return nil, fmt.Errorf("reuse verified layer %d (%s): %w", i+1, l.Digest, err)
			}
		} else {
			if opt.Progress != nil {
				opt.Progress(fmt.Sprintf("layer %d/%d: %s (%d bytes)", i+1, len(m.Layers), l.Digest, l.Size))
			}
			d, err = convertLayer(ctx, s, in, l, layer.BuildOptions{Format: opt.Format, SourceDateEpoch: opt.SourceDateEpoch})
			if err != nil {
				return nil, fmt.Errorf("convert layer %d (%s): %w", i+1, l.Digest, err)
			}
		}
		layers = append(layers, d)
	}
	when := created(opt.SourceDateEpoch)
	if cfg.Created != nil && opt.SourceDateEpoch == nil {
		when = *cfg.Created
	}
	return commit(s, ref, layers, cfg.Config, have, when, cfg.History)
}

// wantPlatform is p, or this machine's platform when p is zero.
func wantPlatform(p ocispec.Platform) ocispec.Platform {
	if p.Architecture == "" {
		return platform.Host()
	}
	return platform.Normalize(p)
}

// pickManifest finds the manifest for src.Tag (or the only one), descending
// into an image index to the entry for want.
func pickManifest(in *store.Store, src Source, want ocispec.Platform) (ocispec.Descriptor, error) {
	var d ocispec.Descriptor
	var err error
	if src.Tag != "" {
		d, err = in.ResolveLayoutTag(src.Tag)
	} else {
		d, err = onlyManifest(in)
	}
	if err != nil {
		return d, fmt.Errorf("source %s: %w", src.Dir, err)
	}
	if d.MediaType == ocispec.MediaTypeImageIndex {
		b, err := in.ReadBlob(d)
		if err != nil {
			return d, err
		}
		idx, err := store.ParseIndex(b)
		if err != nil {
			return d, err
		}
		m, err := platform.Pick(idx, want)
		if err != nil {
			return d, fmt.Errorf("source %s: %w", src.Dir, err)
		}
		return m, nil
	}
	return d, nil
}

func onlyManifest(in *store.Store) (ocispec.Descriptor, error) {
	list, err := in.ListAll()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if len(list) != 1 {
		return ocispec.Descriptor{}, fmt.Errorf("the layout has %d images: name one with oci:DIR:TAG", len(list))
	}
	return list[0], nil
}

// reuseLayer copies a layer that already is a verified filesystem image
// (squashfs or erofs plus its verity tree) from in to s, digest-checked,
// and then checks every block of the copy against the verity root hash of
// its descriptor: a layer whose tree or root hash does not match is refused
// (and not left in the store). The descriptor keeps its media type and
// root-hash annotation (stacker's older annotation name is rewritten to the
// current one); other layer annotations are dropped.
func reuseLayer(ctx context.Context, s, in *store.Store, l ocispec.Descriptor) (ocispec.Descriptor, error) {
	root, err := layer.VerityRoot(l)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	out := ocispec.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size,
		Annotations: map[string]string{layer.AnnotationVerityRoot: hex.EncodeToString(root)}}
	had := s.HasBlob(l.Digest)
	if !had {
		rc, err := in.OpenBlobContext(ctx, l)
		if err != nil {
			return out, err
		}
		_, err = s.PutBlob(rc, ocispec.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return out, fmt.Errorf("copy: %w", err)
		}
	}
	f, err := s.OpenBlobFile(out)
	if err != nil {
		return out, err
	}
	err = layer.Verify(f, out)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if !had {
			if p, perr := s.BlobPath(l.Digest); perr == nil {
				os.Remove(p) // never leave an unverifiable blob behind for later reuse
			}
		}
		return out, fmt.Errorf("verity check against root hash %x: %w", root, err)
	}
	return out, nil
}

// convertLayer streams one tar layer (digest-checked) into a directory and
// builds a verified layer from it.
func convertLayer(ctx context.Context, s *store.Store, in *store.Store, l ocispec.Descriptor, opt layer.BuildOptions) (ocispec.Descriptor, error) {
	rc, err := in.OpenBlobContext(ctx, l)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer rc.Close()
	tmp, err := s.TempDir("convert-*")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.RemoveAll(tmp)
	root := tmp + "/rootfs"
	if err := os.Mkdir(root, 0o755); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := unpackBlob(l.MediaType, rc, root); err != nil {
		return ocispec.Descriptor{}, err
	}
	return addLayer(ctx, s, root, opt)
}

// unpackBlob decompresses a tar layer read from blob into root, then
// drains blob, so that a verifying reader checks the digest of the whole
// blob (tar padding after the end-of-archive marker included). blob is
// read only from the calling goroutine: the decompressor is closed before
// the drain.
func unpackBlob(mediaType string, blob io.Reader, root string) error {
	r, closeR, err := decompress(mediaType, blob)
	if err != nil {
		return err
	}
	err = layer.Unpack(r, root)
	closeR()
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return fmt.Errorf("read the rest of the layer: %w", err)
	}
	return nil
}

func decompress(mediaType string, r io.Reader) (io.Reader, func(), error) {
	switch mediaType {
	case ocispec.MediaTypeImageLayer, "application/vnd.docker.image.rootfs.diff.tar":
		return r, func() {}, nil
	case ocispec.MediaTypeImageLayerGzip, "application/vnd.docker.image.rootfs.diff.tar.gzip":
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return z, func() { z.Close() }, nil
	case ocispec.MediaTypeImageLayerZstd:
		// Synchronous: the decoder reads r only inside Read, from the
		// caller's goroutine (an asynchronous one reads ahead on its own).
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return z, z.Close, nil
	}
	return nil, nil, fmt.Errorf("layer media type %q: only tar, tar+gzip and tar+zstd layers can be converted", mediaType)
}
