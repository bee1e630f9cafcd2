package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"golang.org/x/sys/unix"
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
	if st, err := os.Lstat(dst); err == nil && !st.Mode().IsRegular() {
		// not a blob (see HasBlob): a directory would block the rename
		if err := os.RemoveAll(dst); err != nil {
			return fmt.Errorf("put blob %s: remove the %s in its place: %w", d, st.Mode().Type(), err)
		}
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

// HasBlob reports whether the store has a blob file for d (without
// verifying it). A path that is not a regular file (a symlink, FIFO or
// device planted in the store) is not a blob: a pull replaces it.
func (s *Store) HasBlob(d digest.Digest) bool {
	p, err := s.BlobPath(d)
	if err != nil {
		return false
	}
	st, err := os.Lstat(p)
	return err == nil && st.Mode().IsRegular()
}

// ErrNotRegular is returned (wrapped in a *BlobError, which also matches
// ErrCorrupt) for a blob path that is a symlink, FIFO, device, socket or
// directory: opening or reading such a thing can block forever or read
// another file, so it is refused before any read.
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens path read-only without following a final symlink and
// without blocking (a FIFO opens at once and a device is never read), then
// refuses anything but a regular file. The returned file is in blocking
// mode again. Every read of a blob file, whatever the caller, should open
// it this way (see OpenBlobFile).
func OpenRegular(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	}
	if err == unix.ELOOP {
		return nil, fmt.Errorf("open %s: %w (a symlink)", path, ErrNotRegular)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: %w (%s)", path, ErrNotRegular, fileKind(st.Mode))
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	}
	return fmt.Sprintf("file type %#o", mode&unix.S_IFMT)
}

// OpenBlobFile opens the blob file of desc with OpenRegular and, when
// desc has a size, checks it; it does not check the digest (callers that
// read the file verify what they read: through OpenBlob's reader, dm-verity
// or a verity tree). Callers that need the file itself (loop devices,
// verity) use this instead of opening BlobPath. The caller closes it.
func (s *Store) OpenBlobFile(desc ocispec.Descriptor) (*os.File, error) {
	p, err := s.BlobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := OpenRegular(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &BlobError{Digest: desc.Digest, Problem: "not in the store", Err: ErrNotFound}
	}
	if errors.Is(err, ErrNotRegular) {
		return nil, &BlobError{Digest: desc.Digest, Problem: "the blob file is " + strings.TrimPrefix(err.Error(), "open "+p+": "), Err: errNotRegularCorrupt}
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
	return f, nil
}

// errNotRegularCorrupt matches both ErrNotRegular and ErrCorrupt.
var errNotRegularCorrupt = joinedErr{ErrNotRegular, ErrCorrupt}

type joinedErr []error

func (j joinedErr) Error() string   { return j[0].Error() }
func (j joinedErr) Unwrap() []error { return j }

// OpenBlob opens the blob described by desc for reading (a regular file,
// see OpenBlobFile). The reader checks the size up front and the digest at
// EOF: a Read that reaches the end of a blob whose content does not match
// returns a *BlobError instead of io.EOF. The caller closes it.
func (s *Store) OpenBlob(desc ocispec.Descriptor) (io.ReadCloser, error) {
	f, err := s.OpenBlobFile(desc)
	if err != nil {
		return nil, err
	}
	return &verifyingReader{f: f, want: desc.Digest, h: desc.Digest.Algorithm().Hash()}, nil
}

// OpenBlobContext is OpenBlob whose reads fail with ctx's error once ctx
// is done, so a long read stops on SIGINT/SIGTERM.
func (s *Store) OpenBlobContext(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := s.OpenBlob(desc)
	if err != nil {
		return nil, err
	}
	return &ctxReader{ctx: ctx, rc: rc}, nil
}

// ctxReader checks its context before every read.
type ctxReader struct {
	ctx context.Context
	rc  io.ReadCloser
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.rc.Read(p)
}

func (r *ctxReader) Close() error { return r.rc.Close() }

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
	b, err := bounded.ReadAll(rc, maxJSONSize, "metadata blob")
	if errors.Is(err, bounded.ErrTooLarge) {
		return nil, &BlobError{Digest: desc.Digest, Problem: err.Error(), Err: ErrCorrupt}
	}
	return b, err
}

// VerifyBlob reads the whole blob and checks its size and digest.
func (s *Store) VerifyBlob(desc ocispec.Descriptor) error {
	return s.VerifyBlobContext(context.Background(), desc)
}

// VerifyBlobContext is VerifyBlob that stops when ctx is done.
func (s *Store) VerifyBlobContext(ctx context.Context, desc ocispec.Descriptor) error {
	rc, err := s.OpenBlobContext(ctx, desc)
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
