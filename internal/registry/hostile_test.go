package registry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
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
