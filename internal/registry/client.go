package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
)

// Options configure a Client. The zero value talks HTTPS with the system
// roots, reads credentials from the standard auth files and moves four
// blobs at a time.
type Options struct {
	// PlainHTTP talks http:// instead of https:// (development registries
	// on loopback). Never implied: the caller asks for it.
	PlainHTTP bool
	// Insecure accepts any TLS certificate (still https).
	Insecure bool
	// CAFile adds these PEM CA certificates to the system roots.
	CAFile string
	// AuthFile, when set, is the only credentials file read (see AuthFiles).
	AuthFile string
	// Credentials, when set, are used for every host instead of any file.
	Credentials *Credentials
	// Jobs is how many blobs move at once (default 4).
	Jobs int
	// ChunkSize: uploads up to this size are one PUT, larger ones are sent
	// in PATCH chunks of this size (default 32 MiB).
	ChunkSize int64
	// Retries is how many times a request is retried after a 5xx, 429 or
	// connection error (default 5); Backoff is the first wait, doubled each
	// time (default 250ms).
	Retries int
	Backoff time.Duration
	// RetryDeadline bounds the time spent retrying one request or one
	// blob transfer: no new attempt starts later than this after the first
	// failure (default 5 minutes). Each wait is at most 30 seconds.
	RetryDeadline time.Duration
	// ReadTimeout is the longest wait for a response's headers or for the
	// next bytes of its body: a registry that stalls longer is treated as
	// a broken connection (retried, then an error) (default 1 minute).
	ReadTimeout time.Duration
	// MaxBlobSize refuses descriptors (layers, configs) larger than this
	// before anything is transferred (default 64 GiB).
	MaxBlobSize int64
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
	// Progress receives transfer events; it is called from one goroutine
	// at a time. May be nil.
	Progress func(Event)
}

// Client talks to registries. It is safe for concurrent use.
type Client struct {
	opts Options
	hc   *http.Client
	mu   sync.Mutex
	auth map[string]*hostAuth
	pmu  sync.Mutex // serializes Progress calls
}

// NoRetries is the Retries value that disables retries (0 means the default).
const NoRetries = -1

// Defaults of Options.
const (
	DefaultRetryDeadline = 5 * time.Minute
	DefaultReadTimeout   = time.Minute
	DefaultMaxBlobSize   = 64 << 30
	maxBackoff           = 30 * time.Second
)

// retrier paces the attempts of one request or transfer: at most Retries
// retries, none after RetryDeadline from the first failure, waits doubling
// from Backoff up to maxBackoff.
type retrier struct {
	c     *Client
	n     int
	wait  time.Duration
	start time.Time
}

func (c *Client) retrier() *retrier { return &retrier{c: c, wait: c.opts.Backoff} }

// next waits before another attempt and reports whether there may be one;
// it returns ctx's error when ctx ends while waiting.
func (r *retrier) next(ctx context.Context) (bool, error) { return r.nextNotify(ctx, nil) }

// nextNotify is next, calling before (if not nil) with the attempt number
// and the wait when there will be another attempt.
func (r *retrier) nextNotify(ctx context.Context, before func(attempt int, wait time.Duration)) (bool, error) {
	if r.start.IsZero() {
		r.start = time.Now()
	}
	if r.n >= r.c.opts.Retries || time.Since(r.start)+r.wait > r.c.opts.RetryDeadline {
		return false, nil
	}
	r.n++
	if before != nil {
		before(r.n, r.wait)
	}
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-timeAfter(r.wait):
	}
	r.wait = min(r.wait*2, maxBackoff)
	return true, nil
}

// reset forgets the waits so far (after an authentication round trip,
// which is not a failure).
func (r *retrier) reset() { r.wait = r.c.opts.Backoff }

// New returns a client for opts.
func New(opts Options) (*Client, error) {
	if opts.Jobs <= 0 {
		opts.Jobs = 4
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 32 << 20
	}
	if opts.Retries == 0 {
		opts.Retries = 5
	} else if opts.Retries < 0 {
		opts.Retries = 0
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 250 * time.Millisecond
	}
	if opts.RetryDeadline <= 0 {
		opts.RetryDeadline = DefaultRetryDeadline
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.MaxBlobSize <= 0 {
		opts.MaxBlobSize = DefaultMaxBlobSize
	}
	rt := opts.Transport
	if rt == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableCompression = true // blobs must arrive byte-exact
		tr.MaxIdleConnsPerHost = opts.Jobs + 2
		tr.ReadBufferSize = 256 << 10
		tr.WriteBufferSize = 256 << 10
		tr.ResponseHeaderTimeout = opts.ReadTimeout
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: opts.Insecure}
		if opts.CAFile != "" {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			b, err := bounded.ReadFile(opts.CAFile, 16<<20)
			if err != nil {
				return nil, fmt.Errorf("CA file: %w", err)
			}
			if !pool.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("CA file %s: no PEM certificate in it", opts.CAFile)
			}
			tlsConf.RootCAs = pool
		}
		tr.TLSClientConfig = tlsConf
		rt = tr
	}
	return &Client{opts: opts, hc: &http.Client{Transport: rt, CheckRedirect: checkRedirect}, auth: map[string]*hostAuth{}}, nil
}

// maxRedirects bounds the redirects followed for one request.
const maxRedirects = 10

// checkRedirect keeps credentials on the host they were configured for: a
// redirect to any other host (another port counts: net/http only compares
// host names) or from https to http loses the Authorization header, as
// docker and containers/image do. Blob storage behind a redirect (S3,
// CDNs) authenticates with the signed URL itself.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	if !sameOrigin(via[0].URL, req.URL) {
		req.Header.Del("Authorization")
	}
	return nil
}

// sameOrigin reports whether to may receive the credentials meant for
// from: the same host and port, and no downgrade from https to http.
func sameOrigin(from, to *url.URL) bool {
	return strings.EqualFold(canonicalHost(from), canonicalHost(to)) && (from.Scheme == to.Scheme || to.Scheme == "https")
}

// canonicalHost is u's host:port with the scheme's default port filled in.
func canonicalHost(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// request is one registry API call. body, when set, opens the body afresh
// for each attempt, so every request can be retried.
type request struct {
	op      string // for errors: "pull manifest", ...
	ref     Reference
	method  string
	path    string // after /v2/
	query   url.Values
	rawURL  string // absolute URL (upload locations) instead of path
	header  http.Header
	body    func() (io.ReadCloser, error)
	size    int64 // body length; -1 unknown
	scopes  []string
	expect  []int // acceptable statuses; others become errors
	noRetry bool  // the caller retries itself
}

func pullScope(repo string) string { return "repository:" + repo + ":pull" }
func pushScope(repo string) string { return "repository:" + repo + ":pull,push" }
func (c *Client) scheme() string {
	if c.opts.PlainHTTP {
		return "http"
	}
	return "https"
}

func (c *Client) url(r *request) (string, error) {
	if r.rawURL != "" {
		base, _ := url.Parse(c.scheme() + "://" + r.ref.apiHost() + "/v2/")
		u, err := base.Parse(r.rawURL)
		if err != nil {
			return "", fmt.Errorf("%s %s: bad location %q from the registry", r.op, r.ref.Name(), r.rawURL)
		}
		if len(r.query) > 0 {
			q := u.Query()
			for k, vs := range r.query {
				for _, v := range vs {
					q.Add(k, v)
				}
			}
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	u := url.URL{Scheme: c.scheme(), Host: r.ref.apiHost(), Path: "/v2/" + r.path}
	if len(r.query) > 0 {
		u.RawQuery = r.query.Encode()
	}
	return u.String(), nil
}

// send performs r with authentication and retries and returns a response
// whose status is in r.expect (the caller closes its body), or an error.
func (c *Client) send(ctx context.Context, r *request) (*http.Response, error) {
	host := r.ref.apiHost()
	rt := c.retrier()
	authRetried := false
	for {
		resp, retry, lastErr := c.sendOnce(ctx, r, host, &authRetried)
		if lastErr == nil && !retry {
			return resp, nil
		}
		if retry && lastErr == nil { // answered an authentication challenge
			rt.reset()
			continue
		}
		if !retry || r.noRetry {
			return nil, lastErr
		}
		// Say what is retried and why: an unreachable registry must not
		// look like a hang.
		ok, err := rt.nextNotify(ctx, func(attempt int, wait time.Duration) {
			c.emit(Event{Kind: EventRetry, Request: r.op,
				Error: lastErr.Error(), Attempt: attempt, Of: c.opts.Retries, Wait: wait.String()})
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, lastErr
		}
	}
}

// sendOnce makes one attempt of r. It returns the response, or whether
// another attempt may succeed and the error (retry with a nil error: the
// attempt answered an authentication challenge).
func (c *Client) sendOnce(ctx context.Context, r *request, host string, authRetried *bool) (*http.Response, bool, error) {
	u, err := c.url(r)
	if err != nil {
		return nil, false, err
	}
	var body io.ReadCloser
	if r.body != nil {
		if body, err = r.body(); err != nil {
			return nil, false, fmt.Errorf("%s %s: %w", r.op, r.ref.Name(), err)
		}
	}
	actx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(actx, r.method, u, body)
	if err != nil {
		cancel(nil)
		if body != nil {
			body.Close()
		}
		return nil, false, err
	}
	if body != nil {
		req.ContentLength = r.size
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", "vessel")
	// Credentials go only to the registry host itself, never to an
	// upload Location on another host.
	own := sameOrigin(&url.URL{Scheme: c.scheme(), Host: host}, req.URL)
	if own {
		c.authorize(req, host, r.scopes)
	}
	sentAuth := req.Header.Get("Authorization") != ""
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel(nil)
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		err = fmt.Errorf("%s %s: %w", r.op, r.ref.Name(), err)
		return nil, retryable(err), err
	}
	resp.Body = newStallReader(resp.Body, c.opts.ReadTimeout, cancel)
	if resp.Request != nil && !sameOrigin(&url.URL{Scheme: c.scheme(), Host: host}, resp.Request.URL) {
		// answered by the host a redirect led to: its challenge is not
		// the registry's, and must never get the registry's credentials
		own = false
	}
	for _, s := range r.expect {
		if resp.StatusCode == s {
			return resp, false, nil
		}
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized && !*authRetried && own:
		*authRetried = true
		ok, err := c.answerChallenge(ctx, resp, host, r.ref.Repo, r.scopes, sentAuth)
		if err != nil {
			drain(resp)
			return nil, false, fmt.Errorf("%s %s: %w", r.op, r.ref.Name(), err)
		}
		if ok {
			drain(resp)
			return nil, true, nil
		}
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return nil, true, responseError(r.op, r.ref.Name(), resp, sentAuth, host)
	}
	return nil, false, responseError(r.op, r.ref.Name(), resp, sentAuth, host)
}

// ErrStalled is returned (wrapped) when a registry sends nothing for
// Options.ReadTimeout in the middle of a response body.
var ErrStalled = errors.New("the registry stopped sending data")

// stallReader cancels its request when no bytes arrive for timeout, so a
// registry that stops mid-body cannot hang the client; the read then fails
// with ErrStalled (which is retried like a broken connection).
type stallReader struct {
	rc      io.ReadCloser
	timeout time.Duration
	timer   *time.Timer
	cancel  context.CancelCauseFunc
	stalled error
}

func newStallReader(rc io.ReadCloser, timeout time.Duration, cancel context.CancelCauseFunc) *stallReader {
	s := &stallReader{rc: rc, timeout: timeout, cancel: cancel,
		stalled: fmt.Errorf("%w: nothing received for %s", ErrStalled, timeout)}
	s.timer = time.AfterFunc(timeout, func() { cancel(s.stalled) })
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.rc.Read(p)
	if n > 0 {
		s.timer.Reset(s.timeout)
	}
	if err != nil && err != io.EOF && !s.timer.Stop() {
		// the timer fired: say so instead of "context canceled"
		return n, s.stalled
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.timer.Stop()
	err := s.rc.Close()
	s.cancel(nil)
	return err
}

// retryable reports whether a transport error is worth another attempt:
// refused or reset connections, timeouts, truncated responses.
func retryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		var ce *tls.CertificateVerificationError
		if errors.As(err, &ce) || strings.Contains(err.Error(), "x509:") || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
			return false
		}
	}
	return errors.Is(err, ErrStalled) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// emit sends an event to the progress callback, one at a time.
func (c *Client) emit(e Event) {
	if c.opts.Progress == nil {
		return
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.opts.Progress(e)
}
