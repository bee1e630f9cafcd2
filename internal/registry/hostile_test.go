package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// recorder is a second host that a hostile registry sends the client to:
// it serves blob content and accepts uploads, and records every
// Authorization header it is sent.
type recorder struct {
	srv     *httptest.Server
	mu      sync.Mutex
	auths   []string
	content []byte
}

func newRecorder(t *testing.T, content []byte) *recorder {
	rec := &recorder{content: content}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.auths = append(rec.auths, r.Method+" "+r.URL.Path+": "+r.Header.Get("Authorization"))
		rec.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		switch r.Method {
		case http.MethodGet:
			w.Write(rec.content)
		case http.MethodPatch:
			w.Header().Set("Location", rec.srv.URL+r.URL.Path)
			w.WriteHeader(http.StatusAccepted)
		case http.MethodPut:
			w.WriteHeader(http.StatusCreated)
		}
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

// leaked returns the requests that carried an Authorization header.
func (rec *recorder) leaked() (seen, leaked []string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, a := range rec.auths {
		if !strings.HasSuffix(a, ": ") {
			leaked = append(leaked, a)
		}
	}
	return rec.auths, leaked
}

// hostileAuthRegistry wants credentials (basic or bearer, from its own
// token endpoint) and then sends blob fetches (307) and uploads (Location)
// to other.
func hostileAuthRegistry(t *testing.T, scheme, other string) *httptest.Server {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			w.Write([]byte(`{"token":"secret-token"}`))
			return
		}
		if r.Header.Get("Authorization") == "" {
			if scheme == "basic" {
				w.Header().Set("WWW-Authenticate", `Basic realm="hostile"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="hostile"`)
			}
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch {
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, other+"/storage/blob", http.StatusTemporaryRedirect)
		case r.Method == http.MethodHead:
			w.WriteHeader(http.StatusNotFound)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/"):
			w.Header().Set("Location", other+"/upload/session-1")
			w.WriteHeader(http.StatusAccepted)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Credentials go only to the host they were configured for: not to the
// host a blob fetch is redirected to, nor to an upload Location on another
// host (another port of the same address counts as another host).
func TestCredentialsStayOnTheirHost(t *testing.T) {
	content := []byte("blob content that lives elsewhere")
	desc := ocispec.Descriptor{MediaType: testLayerType, Digest: digest.FromBytes(content), Size: int64(len(content))}
	for _, scheme := range []string{"basic", "bearer"} {
		t.Run(scheme, func(t *testing.T) {
			rec := newRecorder(t, content)
			srv := hostileAuthRegistry(t, scheme, rec.srv.URL)
			c := newClient(t, Options{Credentials: &Credentials{Username: "user", Password: "password"}, ChunkSize: 8})
			ref := mustRef(t, strings.TrimPrefix(srv.URL, "http://")+"/acme/app:1")

			partial := filepath.Join(t.TempDir(), "partial")
			var got []byte
			err := c.download(ctx(t), ref, desc, partial, nil, func(p string) error {
				var err error
				got, err = os.ReadFile(p)
				return err
			})
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("pull through a redirect: %q, %v", got, err)
			}
			open := func(ctx context.Context, off int64) (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(content[off:])), nil
			}
			if _, err := c.pushBlob(ctx(t), ref, desc, open, "", nil); err != nil {
				t.Fatalf("push to a Location on another host: %v", err)
			}
			seen, leaked := rec.leaked()
			if len(seen) < 3 {
				t.Fatalf("the other host saw %d requests (%v), want a GET, PATCHes and a PUT", len(seen), seen)
			}
			if len(leaked) > 0 {
				t.Fatalf("credentials sent to another host: %v", leaked)
			}
		})
	}
}

// hostile serves h as a registry and returns a client for it (no real
// waits between retries) and a reference into it.
func hostile(t *testing.T, opts Options, h http.HandlerFunc) (*Client, Reference) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	if opts.Backoff == 0 {
		opts.Backoff = time.Millisecond
	}
	return newClient(t, opts), mustRef(t, strings.TrimPrefix(srv.URL, "http://")+"/acme/app:1")
}

// shortCtx bounds a call that must return on its own: hitting this
// deadline means the client looped or hung.
func shortCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func pullBlob(c *Client, ctx context.Context, ref Reference, desc ocispec.Descriptor, partial string) error {
	return c.download(ctx, ref, desc, partial, nil, func(string) error { return nil })
}

func notHung(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("a hostile registry's answer was accepted")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the client kept going until the test's deadline: %v", err)
	}
}

// A registry that fails every request stops being asked when the retry
// deadline has passed, however many retries are allowed.
func TestHostileRetriesHaveADeadline(t *testing.T) {
	var n atomic.Int64
	c, ref := hostile(t, Options{Retries: 1 << 20, RetryDeadline: 300 * time.Millisecond}, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	_, _, err := c.getManifest(shortCtx(t), ref)
	notHung(t, err)
	if got := n.Load(); got > 100 {
		t.Fatalf("%d requests: the deadline did not stop the retries", got)
	}
}

// A blob download that gets an empty 200, or responses that end early,
// over and over, fails instead of asking again forever.
func TestHostileShortBodies(t *testing.T) {
	content := bytes.Repeat([]byte("x"), 1000)
	desc := ocispec.Descriptor{MediaType: testLayerType, Digest: digest.FromBytes(content), Size: int64(len(content))}
	t.Run("empty 200", func(t *testing.T) {
		c, ref := hostile(t, Options{Retries: 1 << 20}, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
		})
		err := pullBlob(c, shortCtx(t), ref, desc, filepath.Join(t.TempDir(), "partial"))
		notHung(t, err)
		if !strings.Contains(err.Error(), "empty body") {
			t.Fatalf("error %q does not say the body was empty", err)
		}
	})
	t.Run("empty chunked 200", func(t *testing.T) {
		var n atomic.Int64
		c, ref := hostile(t, Options{Retries: 3}, func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush() // no length: chunked, then nothing
		})
		notHung(t, pullBlob(c, shortCtx(t), ref, desc, filepath.Join(t.TempDir(), "partial")))
		if n.Load() != 4 {
			t.Fatalf("%d requests, want 1 + 3 retries", n.Load())
		}
	})
	t.Run("one byte at a time", func(t *testing.T) {
		var n atomic.Int64
		c, ref := hostile(t, Options{Retries: 5}, func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			off := int64(0)
			if rg := r.Header.Get("Range"); rg != "" {
				fmt.Sscanf(rg, "bytes=%d-", &off)
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, len(content)-1, len(content)))
				w.WriteHeader(http.StatusPartialContent)
			}
			w.Write(content[off : off+1]) // then a clean end
		})
		err := pullBlob(c, shortCtx(t), ref, desc, filepath.Join(t.TempDir(), "partial"))
		notHung(t, err)
		if n.Load() > 6 {
			t.Fatalf("%d requests for a registry that trickles, want at most 1 + 5 retries", n.Load())
		}
	})
}

// A 206 must carry exactly the range that was asked for (from the partial
// file's end to the blob's end); any other is refused, not re-asked.
func TestHostileContentRange(t *testing.T) {
	content := []byte("0123456789")
	desc := ocispec.Descriptor{MediaType: testLayerType, Digest: digest.FromBytes(content), Size: int64(len(content))}
	for name, cr := range map[string]string{
		"other start":   "bytes 1-9/10",
		"other end":     "bytes 5-8/10",
		"other total":   "bytes 5-9/11",
		"malformed":     "bytes five-9/10",
		"missing":       "",
		"backwards":     "bytes 9-5/10",
		"whole blob":    "bytes 0-9/10",
		"unknown total": "bytes 1-9/*",
	} {
		t.Run(name, func(t *testing.T) {
			var n atomic.Int64
			c, ref := hostile(t, Options{Retries: 3}, func(w http.ResponseWriter, r *http.Request) {
				n.Add(1)
				if cr != "" {
					w.Header().Set("Content-Range", cr)
				}
				w.WriteHeader(http.StatusPartialContent)
				w.Write(content[1:])
			})
			partial := filepath.Join(t.TempDir(), "partial")
			if err := os.WriteFile(partial, content[:5], 0o644); err != nil {
				t.Fatal(err)
			}
			err := pullBlob(c, shortCtx(t), ref, desc, partial)
			notHung(t, err)
			if !strings.Contains(err.Error(), "Content-Range") || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %q does not refuse the Content-Range", err)
			}
			if n.Load() != 1 {
				t.Fatalf("%d requests, want 1", n.Load())
			}
		})
	}
}

// A registry that stops sending in the middle of a body is given up on
// after ReadTimeout (and retried, then reported), not waited for forever.
func TestHostileStalledBody(t *testing.T) {
	content := bytes.Repeat([]byte("y"), 4096)
	desc := ocispec.Descriptor{MediaType: testLayerType, Digest: digest.FromBytes(content), Size: int64(len(content))}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var n atomic.Int64
	c, ref := hostile(t, Options{Retries: 2, ReadTimeout: 200 * time.Millisecond}, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		w.Write(content[:100])
		w.(http.Flusher).Flush()
		select { // stall until the client gives up (or the test ends)
		case <-r.Context().Done():
		case <-release:
		}
	})
	partial := filepath.Join(t.TempDir(), "partial")
	err := pullBlob(c, shortCtx(t), ref, desc, partial)
	notHung(t, err)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("error %q is not ErrStalled", err)
	}
	if n.Load() != 3 {
		t.Fatalf("%d requests, want 1 + 2 retries", n.Load())
	}
	// what arrived is kept for the next pull
	if st, err := os.Stat(partial); err != nil || st.Size() != 100 {
		t.Fatalf("partial file: %v %v", st, err)
	}
}

// Descriptors larger than MaxBlobSize are refused before any byte moves,
// whether a manifest lists them or a download is asked for directly.
func TestHostileHugeDescriptor(t *testing.T) {
	var blobGets atomic.Int64
	huge := ocispec.Descriptor{MediaType: testLayerType, Digest: digest.FromString("huge"), Size: 1 << 50}
	cfg := []byte("{}")
	m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: 2}, Layers: []ocispec.Descriptor{huge}})
	c, ref := hostile(t, Options{MaxBlobSize: 1 << 30}, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write(m)
			return
		}
		if strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
		}
		w.WriteHeader(http.StatusNotFound)
	})
	_, err := c.Copy(shortCtx(t), Registry(ref), Store(openStore(t), "app:1"))
	if err == nil || !strings.Contains(err.Error(), "larger than the limit") {
		t.Fatalf("copy of an image with a 1 PiB layer: %v", err)
	}
	err = pullBlob(c, shortCtx(t), ref, huge, filepath.Join(t.TempDir(), "partial"))
	if err == nil || !strings.Contains(err.Error(), "larger than the limit") {
		t.Fatalf("download of a 1 PiB blob: %v", err)
	}
	if blobGets.Load() != 0 {
		t.Fatalf("%d blob requests for refused descriptors", blobGets.Load())
	}
}

// A host that a redirect leads to cannot obtain the registry's credentials
// by answering 401 with its own challenge (a token realm of its own).
func TestRedirectTargetChallengeGetsNoCredentials(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			mu.Lock()
			leaked = append(leaked, r.URL.Path+": "+a)
			mu.Unlock()
		}
		if r.URL.Path == "/token" {
			w.Write([]byte(`{"token":"t"}`))
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="evil"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(other.Close)
	srv := hostileAuthRegistry(t, "basic", other.URL)
	c := newClient(t, Options{Credentials: &Credentials{Username: "user", Password: "password"}, Retries: NoRetries})
	ref := mustRef(t, strings.TrimPrefix(srv.URL, "http://")+"/acme/app:1")
	content := []byte("x")
	desc := ocispec.Descriptor{MediaType: testLayerType, Digest: digest.FromBytes(content), Size: 1}
	// the client learns the registry's challenge first (as a pull does with
	// its manifest), so the blob request goes out with credentials at once
	if _, err := c.blobExists(shortCtx(t), ref, desc.Digest, []string{pullScope(ref.Repo)}); err != nil {
		t.Fatal(err)
	}
	err := pullBlob(c, shortCtx(t), ref, desc, filepath.Join(t.TempDir(), "partial"))
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want the other host's 401", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Fatalf("credentials sent to the redirect target: %v", leaked)
	}
}
