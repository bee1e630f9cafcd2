package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
)

// CommitOptions describe an image made of layers already in the store.
type CommitOptions struct {
	// Ref tags the result ("name[:tag]"); empty stores it untagged (vessel
	// build tags only once every image of a recipe is built).
	Ref      string
	Layers   []ocispec.Descriptor // bottom first; verified filesystem layers
	Config   ocispec.ImageConfig
	Platform ocispec.Platform // OS and architecture of the config
	Created  time.Time
	History  []ocispec.History
	// Author is the config's author field ("" for none).
	Author string
	// Annotations go on the image manifest.
	Annotations map[string]string
}

// Commit writes the config and manifest for layers that are already in s
// and tags the manifest as opt.Ref (unless it is empty). With equal
// options it writes byte-identical blobs, so equal inputs give equal
// digests.
func Commit(s *store.Store, opt CommitOptions) (*Created, error) {
	if opt.Ref != "" {
		if _, _, err := store.ParseRef(opt.Ref); err != nil {
			return nil, err
		}
	}
	for i, l := range opt.Layers {
		if !s.HasBlob(l.Digest) {
			return nil, fmt.Errorf("commit: layer %d (%s) is not in the store", i+1, l.Digest)
		}
	}
	when := opt.Created
	p := wantPlatform(opt.Platform) // zero: this machine's
	img := ocispec.Image{
		Created:  &when,
		Author:   opt.Author,
		Platform: p,
		Config:   opt.Config,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
		History:  opt.History,
	}
	for _, l := range opt.Layers {
		// filesystem-image layers are not compressed: the diff ID is the blob digest
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, l.Digest)
	}
	cfgDesc, err := putJSON(s, ocispec.MediaTypeImageConfig, img)
	if err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	layers := opt.Layers
	if layers == nil {
		layers = []ocispec.Descriptor{}
	}
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      cfgDesc,
		Layers:      layers,
		Annotations: opt.Annotations,
	}
	mDesc, err := putJSON(s, ocispec.MediaTypeImageManifest, m)
	if err != nil {
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	res := &Created{Descriptor: mDesc, Layers: layers}
	if opt.Ref != "" {
		if err := s.Tag(opt.Ref, mDesc); err != nil {
			return nil, err
		}
		name, tag, _ := store.ParseRef(opt.Ref)
		res.Ref = name + ":" + tag
	}
	return res, nil
}

// SourceManifest is the manifest Convert would convert from src: the one
// tagged src.Tag (or the layout's only image), the linux/GOARCH entry of an
// index. Its digest identifies the source for caching conversions.
func SourceManifest(src Source, want ocispec.Platform) (ocispec.Descriptor, error) {
	in, err := store.OpenLayout(src.Dir)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return pickManifest(in, src, wantPlatform(want))
}

// SourceImage reads the manifest and config Convert would convert from
// src (digest-checked): a build looks at them before it converts, for
// example to take an image with no layers (`umoci new`) as it is.
func SourceImage(src Source, want ocispec.Platform) (ocispec.Manifest, ocispec.Image, error) {
	in, err := store.OpenLayout(src.Dir)
	if err != nil {
		return ocispec.Manifest{}, ocispec.Image{}, err
	}
	d, err := pickManifest(in, src, wantPlatform(want))
	if err != nil {
		return ocispec.Manifest{}, ocispec.Image{}, err
	}
	m, err := in.Manifest(d.Digest)
	if err != nil {
		return m, ocispec.Image{}, fmt.Errorf("source %s: %w", src.Dir, err)
	}
	cfg, err := in.Config(m.Config)
	if err != nil {
		return m, cfg, fmt.Errorf("source %s: config: %w", src.Dir, err)
	}
	return m, cfg, nil
}

// ConvertUntagged is Convert without a tag: the converted image is stored
// and its manifest descriptor returned (Created.Ref is empty).
func ConvertUntagged(ctx context.Context, s *store.Store, src Source, opt ConvertOptions) (*Created, error) {
	return convert(ctx, s, src, "", opt)
}

// FromTar stores a root filesystem tarball (plain, gzip or zstd; OCI
// whiteouts allowed) as an untagged image with one verified layer and an
// empty config. It needs root for the same reasons as Convert.
func FromTar(ctx context.Context, s *store.Store, path string, opt ConvertOptions) (*Created, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a tar base needs root: tar layers carry file owners and device nodes that only root can recreate")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read-only
	br := bufio.NewReader(f)
	magic, _ := br.Peek(4)
	mt := ocispec.MediaTypeImageLayer
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		mt = ocispec.MediaTypeImageLayerGzip
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		mt = ocispec.MediaTypeImageLayerZstd
	}
	r, closeR, err := decompress(mt, br)
	if err != nil {
		return nil, fmt.Errorf("tar %s: %w", path, err)
	}
	defer closeR()
	done, err := s.Writer()
	if err != nil {
		return nil, err
	}
	defer done()
	if opt.Progress != nil {
		opt.Progress("unpack " + path)
	}
	tmp, err := s.TempDir("tar-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	root := tmp + "/rootfs"
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, err
	}
	if err := layer.Unpack(r, root); err != nil {
		return nil, fmt.Errorf("tar %s: %w", path, err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("tar %s: %w", path, err)
	}
	d, err := addLayer(ctx, s, root, layer.BuildOptions{Format: opt.Format, SourceDateEpoch: opt.SourceDateEpoch})
	if err != nil {
		return nil, fmt.Errorf("tar %s: %w", path, err)
	}
	return Commit(s, CommitOptions{
		Layers:   []ocispec.Descriptor{d},
		Platform: opt.Platform,
		Created:  created(opt.SourceDateEpoch),
		History:  []ocispec.History{{Created: timePtr(created(opt.SourceDateEpoch)), CreatedBy: "vessel: rootfs tarball"}},
	})
}

func timePtr(t time.Time) *time.Time { return &t }
