package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/registry/registrytest"
	"github.com/vesselos/vessel/internal/store"
)

// testLayerType is a layer media type the copy code does not interpret.
const testLayerType = "application/vnd.stacker.image.layer.squashfs+zstd"

// makeImage stores an image with pseudo-random layers of the given sizes
// (seeded, so the same sizes and seed give the same digests) and tags it.
func makeImage(t testing.TB, st *store.Store, ref string, seed uint64, sizes ...int) ocispec.Descriptor {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	var layers []ocispec.Descriptor
	for _, n := range sizes {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		layers = append(layers, putBytes(t, st, testLayerType, b))
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, RootFS: ocispec.RootFS{Type: "layers"}})
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: putBytes(t, st, ocispec.MediaTypeImageConfig, cfg), Layers: layers}
	mb, _ := json.Marshal(m)
	d := putBytes(t, st, ocispec.MediaTypeImageManifest, mb)
	if err := st.Tag(ref, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func putBytes(t testing.TB, st *store.Store, mt string, b []byte) ocispec.Descriptor {
	t.Helper()
	d, err := st.PutBlob(bytes.NewReader(b), ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newClient(t testing.TB, opts Options) *Client {
	t.Helper()
	opts.PlainHTTP = true
	if opts.Backoff == 0 {
		opts.Backoff = 10 * time.Millisecond
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// inProcess starts go-containerregistry's registry, with or without the
// referrers API, and returns its host.
func inProcess(t testing.TB, referrers bool) string {
	t.Helper()
	h := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)), ggcr.WithReferrersSupport(referrers))
	if referrers {
		h = withSubjectHeader(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// withSubjectHeader answers a manifest PUT that carries a subject with the
// OCI-Subject header, as a registry with the referrers API does
// (distribution spec 1.1); go-containerregistry's registry indexes the
// subject but does not send the header.
func withSubjectHeader(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
			var m struct {
				Subject *ocispec.Descriptor `json:"subject"`
			}
			if json.Unmarshal(b, &m) == nil && m.Subject != nil {
				w.Header().Set("OCI-Subject", m.Subject.Digest.String())
			}
		}
		h.ServeHTTP(w, r)
	})
}

func distribution(t testing.TB, opts registrytest.Options) string {
	t.Helper()
	return registrytest.Start(t, opts).Host
}

func mustRef(t testing.TB, s string) Reference {
	t.Helper()
	r, err := ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func OpenLayoutForTest(dir string) (*store.Store, error) { return store.OpenLayout(dir) }
