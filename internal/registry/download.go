package registry

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// errPartialGone means another process committed the blob while we waited
// for its partial file.
var errPartialGone = errors.New("partial blob was committed by another process")

// download fetches blob desc from ref into the file partial, continuing
// whatever an earlier, interrupted download left there with a Range request,
// and calls commit(partial) once the whole blob is there and its size and
// digest are right. A blob that does not match is deleted, never committed.
// The partial file is locked (flock) from open to commit, so two processes
// pulling the same blob take turns instead of mixing bytes.
//
// A failed download keeps the partial file only when it holds bytes to
// continue from and the failure was the registry's; after a local failure
// (a full disk) or with nothing received it is removed.
func (c *Client) download(ctx context.Context, ref Reference, desc ocispec.Descriptor, partial string, progress func(done, resumedAt int64), commit func(path string) error) (err error) {
	if desc.Size > c.opts.MaxBlobSize || desc.Size < 0 {
		return tooLarge("pull blob "+desc.Digest.String()+" from", ref, desc, c.opts.MaxBlobSize)
	}
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("pull blob %s: %w", desc.Digest, err)
	}
	defer f.Close()
	if err := flock(f); err != nil {
		return fmt.Errorf("pull blob %s: lock %s: %w", desc.Digest, partial, err)
	}
	var fst, pst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return err
	}
	if err := unix.Stat(partial, &pst); err != nil || pst.Ino != fst.Ino || pst.Dev != fst.Dev {
		return errPartialGone
	}
	var size int64
	defer func() {
		if err != nil && size == 0 {
			os.Remove(partial) // nothing to continue from
		}
	}()
	size = fst.Size
	if size > desc.Size {
		size = 0
	}
	h := sha256.New()
	if size > 0 {
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
			return fmt.Errorf("pull blob %s: read partial: %w", desc.Digest, err)
		}
	}
	resumedAt := size
	var lastErr error
	rt := c.retrier()
	buf := make([]byte, 1<<20)
	for attempt := 0; size < desc.Size || (size == 0 && desc.Size == 0 && attempt == 0); attempt++ {
		if attempt > 0 {
			// every attempt that did not finish the blob counts, a short
			// but clean response too: a registry cannot keep vessel asking
			ok, err := rt.next(ctx)
			if err != nil {
				return err
			}
			if !ok {
				return keptErr(fmt.Errorf("gave up after %d attempts: %w", attempt, lastErr), size)
			}
			c.emit(Event{Kind: EventRetry, Digest: desc.Digest, Offset: size, Error: lastErr.Error()})
		}
		body, start, err := c.getBlob(ctx, ref, desc, size, true)
		if err == nil {
			if start != size { // the registry ignored Range: start again
				size, resumedAt = 0, 0
				h.Reset()
			}
			var n int64
			n, err = copyAt(f, size, h, io.LimitReader(body, desc.Size-size+1), buf, func(k int64) {
				if progress != nil {
					progress(size+k, resumedAt)
				}
			})
			body.Close()
			size += n
			if err == nil && size == 0 && desc.Size == 0 {
				break
			}
			if err == nil && size < desc.Size {
				err = fmt.Errorf("%w: the response ended at byte %d of %d", io.ErrUnexpectedEOF, size, desc.Size)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var le *localError
			if errors.As(err, &le) {
				// the local disk failed (full, read-only): keep nothing
				f.Close()
				os.Remove(partial)
				return fmt.Errorf("pull blob %s: %w (the partial download was removed)", desc.Digest, le.err)
			}
			if !transient(err) {
				return keptErr(err, size)
			}
			lastErr = err
			continue
		}
		if size >= desc.Size {
			break
		}
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	got := fmt.Sprintf("sha256:%x", h.Sum(nil))
	if size != desc.Size || got != desc.Digest.String() {
		os.Remove(partial)
		what := fmt.Sprintf("content has digest %s", got)
		if size != desc.Size {
			what = fmt.Sprintf("the registry sent %d bytes, the descriptor says %d", size, desc.Size)
		}
		return fmt.Errorf("pull blob %s from %s: %w: %s (nothing was stored)", desc.Digest, ref.Name(), ErrCorrupt, what)
	}
	if err := commit(partial); err != nil {
		os.Remove(partial) // a full disk must not stay full of it
		return err
	}
	return nil
}

// keptErr says, when a download failed with size bytes in its partial
// file, that they are kept for the next pull.
func keptErr(err error, size int64) error {
	if size == 0 {
		return err
	}
	return fmt.Errorf("%w (the %d bytes received so far are kept; run the pull again to continue)", err, size)
}

// localError is a failure of the local file, not of the registry.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// copyAt writes r to f from offset off, hashing it, and reports the count
// written so far after each write. Failures of f are *localError.
func copyAt(f *os.File, off int64, h hash.Hash, r io.Reader, buf []byte, report func(int64)) (int64, error) {
	if err := f.Truncate(off); err != nil {
		return 0, &localError{err}
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, &localError{err}
	}
	var n int64
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			if _, err := f.Write(buf[:k]); err != nil {
				return n, &localError{err}
			}
			h.Write(buf[:k])
			n += int64(k)
			report(n)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			return err
		}
	}
}
