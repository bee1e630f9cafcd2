package store

import (
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
)

// BlobError says which blob failed and why. It wraps ErrNotFound or ErrCorrupt.
type BlobError struct {
	Digest  digest.Digest
	Problem string
	Err     error
}

func (e *BlobError) Error() string { return fmt.Sprintf("blob %s: %s", e.Digest, e.Problem) }
func (e *BlobError) Unwrap() error { return e.Err }

// PutBlob copies r into the store and returns its descriptor. When want has a
// digest (and a size, if non-zero), the content must match it or nothing is
// stored. Writes go to a temp file that is fsynced and renamed into place.
func (s *Store) PutBlob(r io.Reader, want ocispec.Descriptor) (ocispec.Descriptor, error) {
	if s.readOnly {
		return ocispec.Descriptor{}, errReadOnly
	}
	f, err := os.CreateTemp(s.tmpDir(), "blob-*")
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("put blob: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name()) // no-op after a successful rename
	}()
	d := digest.SHA256.Digester()
	n, err := io.Copy(io.MultiWriter(f, d.Hash()), r)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("put blob: %w", err)
	}
	got := ocispec.Descriptor{MediaType: want.MediaType, Digest: d.Digest(), Size: n, Annotations: want.Annotations}
	if err := checkDesc(want, got); err != nil {
		return ocispec.Descriptor{}, err
	}
	return got, s.commitTemp(f, got.Digest)
}

// PutBlobFile moves the finished file at path into the store under digest
// d, which the caller has computed while writing it (see HashingWriter). The
// file is fsynced first; on error the file is left for the caller to remove.
func (s *Store) PutBlobFile(path string, d digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("put blob %s: %w", d, err)
	}
	defer f.Close()
	return s.commitTemp(f, d)
}

// commitTemp fsyncs f and renames it to the blob path of d.
func (s *Store) commitTemp(f *os.File, d digest.Digest) error {
	if s.readOnly {
		return errReadOnly
	}
	dst, err := s.BlobPath(d)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put blob %s: fsync: %w", d, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("put blob %s: %w", d, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("put blob %s: %w", d, err)
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

func checkDesc(want, got ocispec.Descriptor) error {
	if want.Digest != "" && want.Digest != got.Digest {
		return &BlobError{Digest: want.Digest, Problem: fmt.Sprintf("content has digest %s", got.Digest), Err: ErrCorrupt}
	}
	if want.Size != 0 && want.Size != got.Size {
		return &BlobError{Digest: got.Digest, Problem: fmt.Sprintf("size is %d bytes, expected %d", got.Size, want.Size), Err: ErrCorrupt}
	}
	return nil
}

// HasBlob reports whether the store has a blob file for d (without verifying it).
func (s *Store) HasBlob(d digest.Digest) bool {
	p, err := s.BlobPath(d)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// OpenBlob opens the blob described by desc for reading. The reader checks
// the size up front and the digest at EOF: a Read that reaches the end of a
// blob whose content does not match returns a *BlobError instead of io.EOF.
// The caller closes it.
func (s *Store) OpenBlob(desc ocispec.Descriptor) (io.ReadCloser, error) {
	p, err := s.BlobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &BlobError{Digest: desc.Digest, Problem: "not in the store", Err: ErrNotFound}
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", desc.Digest, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open blob %s: %w", desc.Digest, err)
	}
	if desc.Size != 0 && st.Size() != desc.Size {
		f.Close()
		return nil, &BlobError{Digest: desc.Digest, Problem: fmt.Sprintf("size is %d bytes, descriptor says %d (truncated or replaced)", st.Size(), desc.Size), Err: ErrCorrupt}
	}
	return &verifyingReader{f: f, want: desc.Digest, h: desc.Digest.Algorithm().Hash()}, nil
}

type verifyingReader struct {
	f    *os.File
	want digest.Digest
	h    hash.Hash
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.f.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
			return n, &BlobError{Digest: v.want, Problem: fmt.Sprintf("content has digest %s (modified on disk)", got), Err: ErrCorrupt}
		}
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.f.Close() }

// ReadBlob reads a small blob (a manifest, config or index) fully and verifies it.
func (s *Store) ReadBlob(desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxJSONSize {
		return nil, &BlobError{Digest: desc.Digest, Problem: fmt.Sprintf("%d bytes is too large for a metadata blob", desc.Size), Err: ErrCorrupt}
	}
	rc, err := s.OpenBlob(desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(rc, maxJSONSize+1)); err != nil {
		return nil, err
	}
	if buf.Len() > maxJSONSize {
		return nil, &BlobError{Digest: desc.Digest, Problem: "too large for a metadata blob", Err: ErrCorrupt}
	}
	return buf.Bytes(), nil
}

// VerifyBlob reads the whole blob and checks its size and digest.
func (s *Store) VerifyBlob(desc ocispec.Descriptor) error {
	rc, err := s.OpenBlob(desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

// TempFile creates a file in the store's temp directory (same filesystem as
// the blobs, so it can be committed with PutBlobFile by rename).
func (s *Store) TempFile(pattern string) (*os.File, error) {
	return os.CreateTemp(s.tmpDir(), pattern)
}

// TempDir creates a directory in the store's temp directory.
func (s *Store) TempDir(pattern string) (string, error) {
	return os.MkdirTemp(s.tmpDir(), pattern)
}
