// Package archive reads image archives — oci-archive: (a tar of an OCI
// image layout) and docker-archive: (the tar `docker save` writes) — into a
// temporary OCI image layout, which the rest of vessel then reads with its
// usual checks (store.OpenLayout verifies every blob's size and digest on
// read). Archives are sources only: vessel writes layouts (oci:DIR), and a
// tar of one is an oci-archive.
//
// Nothing in an archive is trusted: entries with absolute paths, ".."
// components, links other than docker save's layer symlinks, devices or
// duplicate names are refused; only the files a layout or a docker save
// manifest needs are written, each with O_EXCL under the new directory.
//
// References are parsed by package reference; callers unpack with Open
// and remove the layout with Layout.Close on every path.
package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/lazyre"
	"github.com/vesselos/vessel/internal/reference"
)

// ErrArchive is wrapped by every error about a malformed archive.
var ErrArchive = errors.New("bad image archive")

// maxManifestSize bounds docker save's manifest.json.
const maxManifestSize = 8 << 20

// Layout is an archive unpacked into a temporary OCI image layout.
type Layout struct {
	// Dir is the layout directory; Close removes it.
	Dir string
	// Tag is the org.opencontainers.image.ref.name to read, or "" for the
	// layout's only image.
	Tag string
}

// Close removes the unpacked layout. It is safe to call more than once.
func (l *Layout) Close() error {
	if l == nil || l.Dir == "" {
		return nil
	}
	err := os.RemoveAll(l.Dir)
	if err == nil {
		l.Dir = ""
	}
	return err
}

// Open unpacks the archive that r names (Transport OCIArchive or
// DockerArchive) into a new directory under tmp (os.TempDir() if empty).
// The caller closes the Layout.
func Open(ctx context.Context, r reference.Ref, tmp string) (*Layout, error) {
	if !r.IsArchive() {
		return nil, fmt.Errorf("%s is not an archive reference", r)
	}
	dir, err := os.MkdirTemp(tmp, "vessel-archive-")
	if err != nil {
		return nil, fmt.Errorf("unpack %s: %w", r, err)
	}
	l := &Layout{Dir: dir}
	if r.Transport == reference.OCIArchive {
		l.Tag = r.Tag
		err = unpackOCI(ctx, r.Dir, dir)
	} else {
		err = unpackDocker(ctx, r, dir)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("%s: %w", r, err)
	}
	return l, nil
}

var blobPathRE = lazyre.New(`^blobs/sha256/[a-f0-9]{64}$`)

// entryName cleans a tar entry name and refuses one that is absolute or
// climbs.
func entryName(h *tar.Header) (string, error) {
	n := h.Name
	if strings.HasPrefix(n, "/") {
		return "", fmt.Errorf("%w: entry %q has an absolute path", ErrArchive, h.Name)
	}
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: entry %q has a '..' component", ErrArchive, h.Name)
		}
	}
	return path.Clean(n), nil
}

// walk calls fn for each entry of the tar file p, checking ctx between
// entries and while fn reads.
func walk(ctx context.Context, p string, fn func(h *tar.Header, name string, r io.Reader) error) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close() // read-only
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: f})
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			return fmt.Errorf("%w: read %s: %v", ErrArchive, p, err)
		}
		name, err := entryName(h)
		if err != nil {
			return err
		}
		if err := fn(h, name, tr); err != nil {
			return err
		}
	}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// writeNew writes exactly size bytes of r to a new file p (never replacing
// one) and returns their sha256.
func writeNew(p string, r io.Reader, size int64) (digest.Digest, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("%w: %s appears twice", ErrArchive, filepath.Base(p))
		}
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("%w: %s is truncated (%d of %d bytes)", ErrArchive, filepath.Base(p), n, size)
	}
	if err != nil {
		return "", err
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil))), nil
}

// unpackOCI writes the layout files of an oci-archive (oci-layout,
// index.json, blobs/sha256/*) into dir; other regular files are skipped.
func unpackOCI(ctx context.Context, archive, dir string) error {
	var sawLayout, sawIndex bool
	err := walk(ctx, archive, func(h *tar.Header, name string, r io.Reader) error {
		switch h.Typeflag {
		case tar.TypeDir:
			return nil
		case tar.TypeReg:
		default:
			return fmt.Errorf("%w: entry %q is not a regular file or directory (type %q)", ErrArchive, h.Name, h.Typeflag)
		}
		switch {
		case name == ocispec.ImageLayoutFile:
			sawLayout = true
		case name == ocispec.ImageIndexFile:
			sawIndex = true
		case blobPathRE.MatchString(name):
		default:
			return nil // not part of the layout
		}
		_, err := writeNew(filepath.Join(dir, filepath.FromSlash(name)), r, h.Size)
		return err
	})
	if err != nil {
		return err
	}
	if !sawLayout || !sawIndex {
		return fmt.Errorf("%w: not an OCI layout archive (no %s or %s at its top)", ErrArchive, ocispec.ImageLayoutFile, ocispec.ImageIndexFile)
	}
	return nil
}

// dockerManifest is one entry of docker save's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// unpackDocker turns the image r names in a docker save archive into an OCI
// layout with one untagged manifest: the config and layer files keep their
// exact bytes (so the config digest is the docker image ID, as skopeo
// keeps it), layers get OCI tar media types by their compression.
func unpackDocker(ctx context.Context, r reference.Ref, dir string) error {
	var manifestJSON []byte
	links := map[string]string{} // symlink entry -> target entry (older docker save dedups layers so)
	err := walk(ctx, r.Dir, func(h *tar.Header, name string, rd io.Reader) error {
		switch {
		case h.Typeflag == tar.TypeSymlink:
			t := h.Linkname
			if !strings.HasPrefix(t, "/") {
				t = path.Join(path.Dir(name), t)
			}
			if strings.HasPrefix(t, "/") || t == ".." || strings.HasPrefix(t, "../") {
				return fmt.Errorf("%w: symlink %q points outside the archive (%q)", ErrArchive, h.Name, h.Linkname)
			}
			links[name] = t
		case h.Typeflag == tar.TypeReg && name == "manifest.json":
			if h.Size > maxManifestSize {
				return fmt.Errorf("%w: manifest.json is %d bytes, more than %d", ErrArchive, h.Size, maxManifestSize)
			}
			b, err := io.ReadAll(io.LimitReader(rd, h.Size))
			if err != nil {
				return err
			}
			manifestJSON = b
		}
		return nil
	})
	if err != nil {
		return err
	}
	if manifestJSON == nil {
		return fmt.Errorf("%w: no manifest.json: not a docker save archive", ErrArchive)
	}
	var all []dockerManifest
	if err := json.Unmarshal(manifestJSON, &all); err != nil {
		return fmt.Errorf("%w: manifest.json: %v", ErrArchive, err)
	}
	m, err := pick(all, r)
	if err != nil {
		return err
	}
	// The files to copy, after following symlinks.
	resolve := func(n string) (string, error) {
		n = path.Clean(n)
		for i := 0; i < 16; i++ {
			t, ok := links[n]
			if !ok {
				return n, nil
			}
			n = t
		}
		return "", fmt.Errorf("%w: symlink loop at %q", ErrArchive, n)
	}
	need := map[string]digest.Digest{}
	files := append([]string{m.Config}, m.Layers...)
	real := make([]string, len(files))
	for i, f := range files {
		if real[i], err = resolve(f); err != nil {
			return err
		}
		need[real[i]] = ""
	}
	sizes := map[string]int64{}
	media := map[string]string{}
	tmp := filepath.Join(dir, "blobs", "sha256")
	n := 0
	err = walk(ctx, r.Dir, func(h *tar.Header, name string, rd io.Reader) error {
		if _, ok := need[name]; !ok || h.Typeflag != tar.TypeReg {
			return nil
		}
		if need[name] != "" {
			return fmt.Errorf("%w: %q appears twice", ErrArchive, name)
		}
		n++
		p := filepath.Join(tmp, fmt.Sprintf(".part-%d", n))
		var head [4]byte
		br := &headReader{r: rd, head: head[:0:4]}
		d, err := writeNew(p, br, h.Size)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		final := filepath.Join(tmp, d.Encoded())
		if _, err := os.Stat(final); err == nil {
			os.Remove(p) // the same bytes under two names
		} else if err := os.Rename(p, final); err != nil {
			return err
		}
		need[name], sizes[name], media[name] = d, h.Size, layerMediaType(br.head)
		return nil
	})
	if err != nil {
		return err
	}
	for _, f := range real {
		if need[f] == "" {
			return fmt.Errorf("%w: manifest.json names %q, which the archive does not hold as a file", ErrArchive, f)
		}
	}
	om := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: need[real[0]], Size: sizes[real[0]]},
		Layers:    []ocispec.Descriptor{},
	}
	for _, f := range real[1:] {
		om.Layers = append(om.Layers, ocispec.Descriptor{MediaType: media[f], Digest: need[f], Size: sizes[f]})
	}
	mb, err := json.Marshal(om)
	if err != nil {
		return err
	}
	md, err := writeNew(filepath.Join(tmp, ".manifest"), bytes.NewReader(mb), int64(len(mb)))
	if err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, ".manifest"), filepath.Join(tmp, md.Encoded())); err != nil {
		return err
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(mb))}}}
	ib, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	lb, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), lb, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ocispec.ImageIndexFile), ib, 0o644)
}

// pick finds the manifest.json entry r names: by RepoTags, or the only one.
func pick(all []dockerManifest, r reference.Ref) (dockerManifest, error) {
	var tags []string
	for _, m := range all {
		tags = append(tags, m.RepoTags...)
	}
	if r.Name == "" {
		if len(all) != 1 {
			return dockerManifest{}, fmt.Errorf("%w: the archive holds %d images: name one with docker-archive:PATH:NAME:TAG (RepoTags: %s)", ErrArchive, len(all), strings.Join(tags, ", "))
		}
		return check(all[0])
	}
	for _, m := range all {
		for _, t := range m.RepoTags {
			if tr, err := reference.ParseDocker(t); err == nil && tr.Host == r.Host && tr.Name == r.Name && tr.Tag == r.Tag {
				return check(m)
			}
		}
	}
	return dockerManifest{}, fmt.Errorf("%w: no image tagged %s/%s:%s (RepoTags: %s)", ErrArchive, r.Host, r.Name, r.Tag, strings.Join(tags, ", "))
}

func check(m dockerManifest) (dockerManifest, error) {
	if m.Config == "" {
		return m, fmt.Errorf("%w: manifest.json entry without Config", ErrArchive)
	}
	return m, nil
}

// headReader keeps the first bytes read through it.
type headReader struct {
	r    io.Reader
	head []byte
}

func (h *headReader) Read(b []byte) (int, error) {
	n, err := h.r.Read(b)
	if room := cap(h.head) - len(h.head); room > 0 && n > 0 {
		h.head = append(h.head, b[:min(n, room)]...)
	}
	return n, err
}

// layerMediaType names a docker save layer by its compression (docker
// writes plain tar; other tools may write gzip or zstd).
func layerMediaType(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return ocispec.MediaTypeImageLayerGzip
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayer
}
