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
func (c *Client) download(ctx context.Context, ref Reference, desc ocispec.Descriptor, partial string, progress func(done, resumedAt int64), commit func(path string) error) error {
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
	size := fst.Size
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
	wait := c.opts.Backoff
	buf := make([]byte, 1<<20)
	for attempt := 0; size < desc.Size || (size == 0 && desc.Size == 0 && attempt == 0); attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-timeAfter(wait):
			}
			wait *= 2
		}
		body, start, err := c.getBlob(ctx, ref, desc.Digest, size, true)
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
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if attempt < c.opts.Retries && transient(err) {
				c.emit(Event{Kind: EventRetry, Digest: desc.Digest, Offset: size, Error: err.Error()})
				continue
			}
			return fmt.Errorf("pull blob %s: %w (the %d bytes received so far are kept; run the pull again to continue)", desc.Digest, err, size)
		}
		if size >= desc.Size {
			break
		}
		// a clean EOF before the end: ask for the rest
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
	return commit(partial)
}

// copyAt writes r to f from offset off, hashing it, and reports the count
// written so far after each write.
func copyAt(f *os.File, off int64, h hash.Hash, r io.Reader, buf []byte, report func(int64)) (int64, error) {
	if err := f.Truncate(off); err != nil {
		return 0, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	var n int64
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			if _, err := f.Write(buf[:k]); err != nil {
				return n, err
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
