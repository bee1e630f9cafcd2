package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// blobExists asks the registry (HEAD) whether repo has the blob d.
func (c *Client) blobExists(ctx context.Context, ref Reference, d digest.Digest, scopes []string) (bool, error) {
	resp, err := c.send(ctx, &request{op: "check blob " + d.String() + " in", ref: ref, method: http.MethodHead,
		path: ref.Repo + "/blobs/" + d.String(), scopes: scopes, expect: []int{http.StatusOK, http.StatusNotFound}})
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

// getBlob opens blob desc from offset on. The returned start is where the
// body begins: offset when the registry honoured the Range request, 0 when
// it sent the whole blob. A 206 must cover exactly what was asked (from
// offset to the end of the blob), and a 200 must not be empty when the
// blob is not; anything else is an error, never a reason to ask again.
// The caller closes the body and checks the digest.
func (c *Client) getBlob(ctx context.Context, ref Reference, desc ocispec.Descriptor, offset int64, noRetry bool) (io.ReadCloser, int64, error) {
	d := desc.Digest
	op := "pull blob " + d.String() + " from"
	if desc.Size > c.opts.MaxBlobSize {
		return nil, 0, tooLarge(op, ref, desc, c.opts.MaxBlobSize)
	}
	r := &request{op: op, ref: ref, method: http.MethodGet,
		path: ref.Repo + "/blobs/" + d.String(), scopes: []string{pullScope(ref.Repo)},
		expect: []int{http.StatusOK, http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable}, noRetry: noRetry}
	if offset > 0 {
		r.header = http.Header{"Range": {fmt.Sprintf("bytes=%d-", offset)}}
	}
	for {
		resp, err := c.send(ctx, r)
		if err != nil {
			return nil, 0, err
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			start, end, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
			if !ok || start != offset || end != desc.Size-1 || (total >= 0 && total != desc.Size) {
				drain(resp)
				return nil, 0, fmt.Errorf("%s %s: %w: asked for bytes %d-%d of %d, the registry answered 206 with Content-Range %q",
					op, ref.Name(), ErrCorrupt, offset, desc.Size-1, desc.Size, resp.Header.Get("Content-Range"))
			}
			if resp.ContentLength >= 0 && resp.ContentLength != desc.Size-offset {
				drain(resp)
				return nil, 0, fmt.Errorf("%s %s: %w: a 206 for %d bytes has Content-Length %d", op, ref.Name(), ErrCorrupt, desc.Size-offset, resp.ContentLength)
			}
			return resp.Body, start, nil
		case http.StatusRequestedRangeNotSatisfiable:
			drain(resp)
			if r.header == nil {
				return nil, 0, fmt.Errorf("%s %s: registry refused a plain GET with 416", op, ref.Name())
			}
			r.header = nil // once: the whole blob
			continue
		}
		if desc.Size > 0 && resp.ContentLength == 0 {
			drain(resp)
			return nil, 0, fmt.Errorf("%s %s: %w: the registry answered 200 with an empty body for a blob of %d bytes", op, ref.Name(), ErrCorrupt, desc.Size)
		}
		if resp.ContentLength > desc.Size && desc.Size >= 0 {
			drain(resp)
			return nil, 0, fmt.Errorf("%s %s: %w: the registry sends %d bytes for a blob of %d", op, ref.Name(), ErrCorrupt, resp.ContentLength, desc.Size)
		}
		return resp.Body, 0, nil
	}
}

// tooLarge is the error for a descriptor over Options.MaxBlobSize.
func tooLarge(op string, ref Reference, desc ocispec.Descriptor, limit int64) error {
	return fmt.Errorf("%s %s: descriptor size %d bytes is larger than the limit of %d bytes: %w", op, ref.Name(), desc.Size, limit, ErrTooLarge)
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*",
// returned as -1).
func parseContentRange(h string) (start, end, total int64, ok bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, 0, 0, false
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, false
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	start, err1 = strconv.ParseInt(s, 10, 64)
	end, err2 = strconv.ParseInt(e, 10, 64)
	total = -1
	if tot != "*" {
		total, err3 = strconv.ParseInt(tot, 10, 64)
	}
	return start, end, total, err1 == nil && err2 == nil && err3 == nil && start >= 0 && end >= start
}

// opener opens a blob's content from offset on (each upload attempt opens
// it again).
type opener func(ctx context.Context, offset int64) (io.ReadCloser, error)

// pushBlob uploads a blob the registry does not have: a cross-repository
// mount from mountFrom (a repository on the same host) when given, else one
// PUT for blobs up to ChunkSize and PATCH chunks for larger ones. It reports
// whether the blob was mounted. Failed uploads start again with a new
// session (up to Retries times) when the failure was transient.
func (c *Client) pushBlob(ctx context.Context, ref Reference, desc ocispec.Descriptor, open opener, mountFrom string, progress func(int64)) (bool, error) {
	rt := c.retrier()
	for {
		mounted, err := c.pushBlobOnce(ctx, ref, desc, open, mountFrom, progress)
		if err == nil || ctx.Err() != nil || !transient(err) {
			return mounted, err
		}
		if ok, werr := rt.next(ctx); werr != nil {
			return false, werr
		} else if !ok {
			return mounted, err
		}
		c.emit(Event{Kind: EventRetry, Digest: desc.Digest, Error: err.Error()})
	}
}

// transient reports whether an error may go away on retry.
func transient(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Status >= 500 || e.Status == http.StatusTooManyRequests
	}
	return retryable(err)
}

func (c *Client) pushBlobOnce(ctx context.Context, ref Reference, desc ocispec.Descriptor, open opener, mountFrom string, progress func(int64)) (bool, error) {
	op := "push blob " + desc.Digest.String() + " to"
	start := &request{op: op, ref: ref, method: http.MethodPost, path: ref.Repo + "/blobs/uploads/",
		scopes: []string{pushScope(ref.Repo)}, expect: []int{http.StatusAccepted}}
	if mountFrom != "" && mountFrom != ref.Repo {
		start.query = url.Values{"mount": {desc.Digest.String()}, "from": {mountFrom}}
		start.scopes = append(start.scopes, pullScope(mountFrom))
		start.expect = append(start.expect, http.StatusCreated)
	}
	resp, err := c.send(ctx, start)
	if err != nil {
		return false, err
	}
	drain(resp)
	if resp.StatusCode == http.StatusCreated {
		return true, nil
	}
	loc := resp.Header.Get("Location")
	if loc == "" {
		return false, fmt.Errorf("%s %s: the registry gave no upload location", op, ref.Name())
	}
	scopes := []string{pushScope(ref.Repo)}
	if desc.Size <= c.opts.ChunkSize {
		resp, err = c.send(ctx, &request{op: op, ref: ref, method: http.MethodPut, rawURL: loc,
			query:  url.Values{"digest": {desc.Digest.String()}},
			header: http.Header{"Content-Type": {"application/octet-stream"}},
			body: func() (io.ReadCloser, error) {
				rc, err := open(ctx, 0)
				if err != nil {
					return nil, err
				}
				return &countingReader{rc: rc, report: progress}, nil
			},
			size: desc.Size, scopes: scopes, expect: []int{http.StatusCreated}, noRetry: true})
		if err != nil {
			return false, err
		}
		drain(resp)
		return false, nil
	}
	var done int64
	for done < desc.Size {
		n := min(c.opts.ChunkSize, desc.Size-done)
		off := done
		resp, err = c.send(ctx, &request{op: op, ref: ref, method: http.MethodPatch, rawURL: loc,
			header: http.Header{"Content-Type": {"application/octet-stream"},
				"Content-Range": {fmt.Sprintf("%d-%d", off, off+n-1)}},
			body: func() (io.ReadCloser, error) {
				rc, err := open(ctx, off)
				if err != nil {
					return nil, err
				}
				base := off
				return &countingReader{rc: rc, limit: n, report: func(k int64) {
					if progress != nil {
						progress(base + k)
					}
				}}, nil
			},
			size: n, scopes: scopes, expect: []int{http.StatusAccepted, http.StatusNoContent}, noRetry: true})
		if err != nil {
			return false, err
		}
		drain(resp)
		if l := resp.Header.Get("Location"); l != "" {
			loc = l
		}
		done += n
	}
	resp, err = c.send(ctx, &request{op: op, ref: ref, method: http.MethodPut, rawURL: loc,
		query: url.Values{"digest": {desc.Digest.String()}}, scopes: scopes,
		body: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(nil)), nil }, size: 0,
		expect: []int{http.StatusCreated}, noRetry: true})
	if err != nil {
		return false, err
	}
	drain(resp)
	return false, nil
}

// countingReader reports how many bytes were read, and stops at limit (if
// non-zero).
type countingReader struct {
	rc     io.ReadCloser
	n      int64
	limit  int64
	report func(int64)
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.limit > 0 {
		if r.n >= r.limit {
			return 0, io.EOF
		}
		if int64(len(p)) > r.limit-r.n {
			p = p[:r.limit-r.n]
		}
	}
	n, err := r.rc.Read(p)
	r.n += int64(n)
	if r.report != nil && n > 0 {
		r.report(r.n)
	}
	return n, err
}

func (r *countingReader) Close() error { return r.rc.Close() }
