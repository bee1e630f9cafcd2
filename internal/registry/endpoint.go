package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/reference"
	"github.com/vesselos/vessel/internal/store"
)

// Endpoint is one end of a copy: an image in a registry, in an OCI layout
// directory, or in the local store.
type Endpoint struct {
	kind  string // "docker", "oci", "store"
	ref   Reference
	dir   string
	tag   string // oci: the ref.name; store: "name:tag" or "name@digest"
	store *store.Store
}

// Registry is the image ref names in a registry.
func Registry(ref Reference) Endpoint { return Endpoint{kind: "docker", ref: ref} }

// Layout is the image tagged tag (org.opencontainers.image.ref.name) in the
// OCI layout dir; an empty tag means the layout's only image as a source
// and an untagged entry as a destination.
func Layout(dir, tag string) Endpoint { return Endpoint{kind: "oci", dir: dir, tag: tag} }

// Store is the image "name[:tag]" (or "name@sha256:..." as a source) in the
// local store. As a destination, an empty name stores without tagging.
func Store(s *store.Store, name string) Endpoint { return Endpoint{kind: "store", store: s, tag: name} }

// IsRegistry reports whether e is in a registry, and which reference.
func (e Endpoint) IsRegistry() (Reference, bool) { return e.ref, e.kind == "docker" }

func (e Endpoint) String() string {
	switch e.kind {
	case "docker":
		return e.ref.String()
	case "oci":
		if e.tag == "" {
			return "oci:" + e.dir
		}
		return "oci:" + e.dir + ":" + e.tag
	}
	if e.tag == "" && e.store != nil {
		return "the store at " + e.store.Root() + " (untagged)"
	}
	return e.tag
}

// ParseLocation parses a command-line image location with package
// reference: docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or a store
// NAME[:TAG] (NAME@DIGEST as a source). Store locations get st (which may be
// nil when the caller has none yet; see WithStore). Archives are refused:
// unpack them with package archive and use the layout.
func ParseLocation(s string, st *store.Store) (Endpoint, error) {
	r, err := reference.Parse(s)
	if err != nil {
		return Endpoint{}, err
	}
	return Location(r, st)
}

// Location is the endpoint of a parsed reference. An archive has none: it
// must be unpacked first (package archive).
func Location(r reference.Ref, st *store.Store) (Endpoint, error) {
	switch r.Transport {
	case reference.Docker:
		return Registry(FromRef(r)), nil
	case reference.OCI:
		return Layout(r.Dir, r.Tag), nil
	case reference.Store:
		return Store(st, r.String()), nil
	}
	return Endpoint{}, fmt.Errorf("%s: a %s is read by unpacking it into a layout first", r, r.Transport)
}

// IsStore reports whether e is in the local store.
func (e Endpoint) IsStore() bool { return e.kind == "store" }

// WithStore sets the store of a store endpoint.
func (e Endpoint) WithStore(s *store.Store) Endpoint {
	e.store = s
	return e
}

// source reads an image's manifests and blobs, byte-exact.
type source interface {
	// root returns the manifest or index the endpoint names, with its exact bytes.
	root(ctx context.Context) (ocispec.Descriptor, []byte, error)
	// manifest returns the exact (digest-checked) bytes of a child manifest.
	manifest(ctx context.Context, d ocispec.Descriptor) ([]byte, error)
	// open returns the blob's bytes from offset on; the destination checks
	// the digest. The caller closes it.
	open(ctx context.Context, d ocispec.Descriptor, offset int64) (io.ReadCloser, error)
}

// destination writes an image.
type destination interface {
	has(ctx context.Context, d ocispec.Descriptor) (bool, error)
	// putBlob writes a blob the destination does not have, checking digest
	// and size; it reports whether it was mounted from the source.
	putBlob(ctx context.Context, d ocispec.Descriptor, src source, progress func(done, resumedAt int64)) (bool, error)
	putManifest(ctx context.Context, d ocispec.Descriptor, b []byte) error
	// tag makes the destination's name point at the root manifest (already put).
	tag(ctx context.Context, d ocispec.Descriptor, b []byte) error
	close() error
}

func (c *Client) source(e Endpoint) (source, error) {
	switch e.kind {
	case "docker":
		return &registrySource{c: c, ref: e.ref}, nil
	case "oci":
		l, err := store.OpenLayout(e.dir)
		if err != nil {
			return nil, err
		}
		return &storeSource{s: l, name: e.tag, layout: true, where: e.String()}, nil
	case "store":
		if e.store == nil {
			return nil, errors.New("no store for " + e.tag)
		}
		return &storeSource{s: e.store, name: e.tag, where: e.tag}, nil
	}
	return nil, fmt.Errorf("unknown endpoint %q", e.kind)
}

func (c *Client) destination(e Endpoint) (destination, error) {
	switch e.kind {
	case "docker":
		return &registryDest{c: c, ref: e.ref}, nil
	case "oci":
		l, err := openLayoutWriter(e.dir)
		if err != nil {
			return nil, err
		}
		return &layoutDest{c: c, l: l, tagName: e.tag}, nil
	case "store":
		if e.store == nil {
			return nil, errors.New("no store for " + e.tag)
		}
		if r, err := reference.Parse(e.tag); e.tag != "" && (err != nil || r.Digest != "") {
			return nil, fmt.Errorf("destination %s: a store destination is NAME[:TAG], not a digest", e.tag)
		}
		done, err := e.store.Writer()
		if err != nil {
			return nil, err
		}
		return &storeDest{c: c, s: e.store, name: e.tag, done: done}, nil
	}
	return nil, fmt.Errorf("unknown endpoint %q", e.kind)
}

// registrySource reads from a registry.
type registrySource struct {
	c   *Client
	ref Reference
}

func (r *registrySource) root(ctx context.Context) (ocispec.Descriptor, []byte, error) {
	return r.c.getManifest(ctx, r.ref)
}

func (r *registrySource) manifest(ctx context.Context, d ocispec.Descriptor) ([]byte, error) {
	_, b, err := r.c.getManifest(ctx, r.ref.WithDigest(d.Digest))
	return b, err
}

func (r *registrySource) open(ctx context.Context, d ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	body, start, err := r.c.getBlob(ctx, r.ref, d, offset, false)
	if err != nil {
		return nil, err
	}
	if start < offset {
		if _, err := io.CopyN(io.Discard, body, offset-start); err != nil {
			body.Close()
			return nil, err
		}
	}
	return body, nil
}

// storeSource reads from the store or a (read-only) OCI layout; every read
// is digest-checked by the store.
type storeSource struct {
	s      *store.Store
	name   string
	layout bool
	where  string
}

func (s *storeSource) root(ctx context.Context) (ocispec.Descriptor, []byte, error) {
	var d ocispec.Descriptor
	var err error
	switch {
	case s.layout && s.name == "":
		var all []ocispec.Descriptor
		if all, err = s.s.ListAll(); err == nil {
			if len(all) != 1 {
				return d, nil, fmt.Errorf("%s has %d images: name one with oci:DIR:TAG", s.where, len(all))
			}
			d = all[0]
		}
	case s.layout:
		d, err = s.s.ResolveLayoutTag(s.name)
	default:
		d, err = s.s.Resolve(s.name)
	}
	if err != nil {
		return d, nil, fmt.Errorf("%s: %w", s.where, err)
	}
	b, err := s.s.ReadBlob(d)
	if err != nil {
		return d, nil, fmt.Errorf("%s: %w", s.where, err)
	}
	if mt := mediaTypeOf(b); mt != "" {
		d.MediaType = mt
	}
	d.Annotations = nil
	return d, b, nil
}

func (s *storeSource) manifest(ctx context.Context, d ocispec.Descriptor) ([]byte, error) {
	return s.s.ReadBlob(d)
}

func (s *storeSource) open(ctx context.Context, d ocispec.Descriptor, offset int64) (io.ReadCloser, error) {
	rc, err := s.s.OpenBlob(d)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		if _, err := io.CopyN(io.Discard, rc, offset); err != nil {
			rc.Close()
			return nil, err
		}
	}
	return rc, nil
}

// registryDest writes to a registry.
type registryDest struct {
	c   *Client
	ref Reference
}

func (r *registryDest) has(ctx context.Context, d ocispec.Descriptor) (bool, error) {
	return r.c.blobExists(ctx, r.ref, d.Digest, []string{pushScope(r.ref.Repo)})
}

func (r *registryDest) putBlob(ctx context.Context, d ocispec.Descriptor, src source, progress func(int64, int64)) (bool, error) {
	mountFrom := ""
	if rs, ok := src.(*registrySource); ok && rs.ref.Host == r.ref.Host && rs.c == r.c {
		mountFrom = rs.ref.Repo
	}
	return r.c.pushBlob(ctx, r.ref, d, func(ctx context.Context, off int64) (io.ReadCloser, error) {
		return src.open(ctx, d, off)
	}, mountFrom, func(n int64) { progress(n, 0) })
}

func (r *registryDest) putManifest(ctx context.Context, d ocispec.Descriptor, b []byte) error {
	_, err := r.c.putManifest(ctx, r.ref.WithDigest(d.Digest), d.MediaType, b)
	return err
}

func (r *registryDest) tag(ctx context.Context, d ocispec.Descriptor, b []byte) error {
	if r.ref.Digest != "" && r.ref.Digest != d.Digest {
		return fmt.Errorf("destination %s is pinned to a digest, but the image is %s", r.ref, d.Digest)
	}
	if r.ref.Tag == "" {
		return r.putManifest(ctx, d, b)
	}
	_, err := r.c.putManifest(ctx, r.ref, d.MediaType, b)
	return err
}

func (r *registryDest) close() error { return nil }

// storeDest writes into the local store, holding its writer lock (so gc
// waits) until close.
type storeDest struct {
	c    *Client
	s    *store.Store
	name string
	done func()
}

func (s *storeDest) has(ctx context.Context, d ocispec.Descriptor) (bool, error) {
	return s.s.HasBlob(d.Digest), nil
}

// partialPath is where a download of d waits until it is complete:
// <root>/tmp/partial-sha256-<hex>, the same file system as the blobs.
func partialPath(dir string, d ocispec.Descriptor) string {
	return filepath.Join(dir, store.PartialPrefix+d.Digest.Algorithm().String()+"-"+d.Digest.Encoded())
}

func (s *storeDest) putBlob(ctx context.Context, d ocispec.Descriptor, src source, progress func(int64, int64)) (bool, error) {
	if rs, ok := src.(*registrySource); ok {
		err := rs.c.download(ctx, rs.ref, d, partialPath(filepath.Join(s.s.Root(), "tmp"), d), progress, func(p string) error {
			return s.s.PutBlobFile(p, d.Digest)
		})
		if errors.Is(err, errPartialGone) && s.s.HasBlob(d.Digest) {
			return false, nil
		}
		return false, err
	}
	rc, err := src.open(ctx, d, 0)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	_, err = s.s.PutBlob(&countingReader{rc: rc, report: func(n int64) { progress(n, 0) }}, d)
	return false, err
}

func (s *storeDest) putManifest(ctx context.Context, d ocispec.Descriptor, b []byte) error {
	if s.s.HasBlob(d.Digest) {
		return nil
	}
	_, err := s.s.PutBlob(bytes.NewReader(b), d)
	return err
}

func (s *storeDest) tag(ctx context.Context, d ocispec.Descriptor, b []byte) error {
	if err := s.putManifest(ctx, d, b); err != nil {
		return err
	}
	if s.name == "" {
		return nil
	}
	return s.s.Tag(s.name, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
}

func (s *storeDest) close() error { s.done(); return nil }
