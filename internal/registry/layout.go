package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/store"
)

// layoutWriter writes into an OCI image layout directory (oci:DIR) the way
// skopeo does: blobs under blobs/sha256, tags as ref.name annotations in
// index.json. Blobs are written to a temp file in DIR, checked and renamed.
type layoutWriter struct{ dir string }

func openLayoutWriter(dir string) (*layoutWriter, error) {
	l := &layoutWriter{dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	lf := filepath.Join(dir, ocispec.ImageLayoutFile)
	if _, err := os.Stat(lf); errors.Is(err, os.ErrNotExist) {
		b, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
		if err := atomicfile.WriteIn(dir, lf, b, 0o644); err != nil {
			return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ocispec.ImageIndexFile)); errors.Is(err, os.ErrNotExist) {
		if err := l.writeIndex(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *layoutWriter) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("blob %q: not a sha256 digest", d)
	}
	return filepath.Join(l.dir, "blobs", "sha256", d.Encoded()), nil
}

func (l *layoutWriter) has(d digest.Digest) bool {
	p, err := l.blobPath(d)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// put copies r into the layout if its digest and size match d.
func (l *layoutWriter) put(d ocispec.Descriptor, r io.Reader) error {
	dst, err := l.blobPath(d.Digest)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(l.dir, ".blob-*")
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		return fmt.Errorf("write blob %s: %w", d.Digest, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != d.Digest || n != d.Size {
		return fmt.Errorf("blob %s: %w: got %s, %d bytes (expected %d)", d.Digest, ErrCorrupt, got, n, d.Size)
	}
	return l.commit(f, dst)
}

func (l *layoutWriter) commit(f *os.File, dst string) error {
	if err := f.Sync(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

func (l *layoutWriter) readIndex() (ocispec.Index, error) {
	b, err := bounded.ReadFile(filepath.Join(l.dir, ocispec.ImageIndexFile), store.MaxJSONSize)
	if err != nil {
		return ocispec.Index{}, err
	}
	return store.ParseIndex(b)
}

func (l *layoutWriter) writeIndex(idx ocispec.Index) error {
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return atomicfile.WriteIn(l.dir, filepath.Join(l.dir, ocispec.ImageIndexFile), b, 0o644)
}

// tag points tag at d in index.json (replacing what it named); with an
// empty tag, d is added untagged unless it is already listed.
func (l *layoutWriter) tag(tag string, d ocispec.Descriptor) error {
	idx, err := l.readIndex()
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		name := m.Annotations[ocispec.AnnotationRefName]
		if (tag != "" && name == tag) || (tag == "" && name == "" && m.Digest == d.Digest) {
			continue
		}
		kept = append(kept, m)
	}
	e := ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
	if tag != "" {
		e.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	}
	idx.Manifests = append(kept, e)
	return l.writeIndex(idx)
}

// layoutDest adapts layoutWriter to destination.
type layoutDest struct {
	c       *Client
	l       *layoutWriter
	tagName string
}

func (d *layoutDest) has(ctx context.Context, desc ocispec.Descriptor) (bool, error) {
	return d.l.has(desc.Digest), nil
}

func (d *layoutDest) putBlob(ctx context.Context, desc ocispec.Descriptor, src source, progress func(int64, int64)) (bool, error) {
	dst, err := d.l.blobPath(desc.Digest)
	if err != nil {
		return false, err
	}
	if rs, ok := src.(*registrySource); ok {
		err := rs.c.download(ctx, rs.ref, desc, filepath.Join(d.l.dir, ".partial-"+desc.Digest.Encoded()), progress, func(p string) error {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			return d.l.commit(f, dst)
		})
		if errors.Is(err, errPartialGone) && d.l.has(desc.Digest) {
			return false, nil
		}
		return false, err
	}
	rc, err := src.open(ctx, desc, 0)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	return false, d.l.put(desc, &countingReader{rc: rc, report: func(n int64) { progress(n, 0) }})
}

func (d *layoutDest) putManifest(ctx context.Context, desc ocispec.Descriptor, b []byte) error {
	if d.l.has(desc.Digest) {
		return nil
	}
	return d.l.put(desc, bytesReader(b))
}

func (d *layoutDest) tag(ctx context.Context, desc ocispec.Descriptor, b []byte) error {
	if err := d.putManifest(ctx, desc, b); err != nil {
		return err
	}
	return d.l.tag(d.tagName, desc)
}

func (d *layoutDest) close() error { return nil }

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
