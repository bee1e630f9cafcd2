package registry

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/registry/registrytest"
	"github.com/vesselos/vessel/internal/store"
)

// proxy forwards to a registry and lets a test watch and damage blob
// responses. onBody sees each chunk of a blob response body (with the
// count already sent) and may change it or cut the connection.
type proxy struct {
	upstream string
	mu       sync.Mutex
	ranges   []string // "PATH RANGE" of blob GETs
	onBody   func(path string, sent int64, chunk []byte) (cut bool)
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = "http", p.upstream, p.upstream, ""
	isBlob := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
	if isBlob {
		p.mu.Lock()
		p.ranges = append(p.ranges, r.URL.Path+" "+r.Header.Get("Range"))
		p.mu.Unlock()
	}
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 64<<10)
	var sent int64
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if isBlob && p.onBody != nil && p.onBody(r.URL.Path, sent, buf[:n]) {
				panic(http.ErrAbortHandler) // cut the connection mid-body
			}
			w.Write(buf[:n])
			sent += int64(n)
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) rangesSeen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ranges...)
}

func startProxy(t testing.TB, p http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(p)
	srv.Config.ErrorLog = nil
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func partialSize(t testing.TB, st *store.Store, d digest.Digest) int64 {
	fi, err := os.Stat(filepath.Join(st.Root(), "tmp", "partial-sha256-"+d.Encoded()))
	if err != nil {
		return -1
	}
	return fi.Size()
}

// The registry process is killed in the middle of a blob: the pull fails,
// the bytes received stay in <root>/tmp, and after the registry comes back
// the next pull continues them with a Range request instead of starting
// over.
func TestPullResumesAfterRegistryKilled(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	src, dst := openStore(t), openStore(t)
	want := makeImage(t, src, "big:1", 9, 8<<20)
	m, _ := src.Manifest(want.Digest)
	layer := m.Layers[0].Digest
	c := newClient(t, Options{})
	if _, err := c.Copy(ctx(t), Store(src, "big:1"), Registry(mustRef(t, "docker://"+reg.Host+"/acme/big:1"))); err != nil {
		t.Fatal(err)
	}
	var killed atomic.Bool
	p := &proxy{upstream: reg.Host, onBody: func(path string, sent int64, chunk []byte) bool {
		if strings.HasSuffix(path, layer.String()) && sent >= 3<<20 && !killed.Swap(true) {
			reg.Kill()
			return true
		}
		return false
	}}
	ref := mustRef(t, "docker://"+startProxy(t, p)+"/acme/big:1")
	noRetry := newClient(t, Options{Retries: NoRetries})
	_, err := noRetry.Copy(ctx(t), Registry(ref), Store(dst, "big:1"))
	if err == nil || !killed.Load() {
		t.Fatalf("pull with the registry killed: err=%v killed=%v", err, killed.Load())
	}
	got := partialSize(t, dst, layer)
	if got < 3<<20 || got >= 8<<20 {
		t.Fatalf("partial blob is %d bytes, want the 3 MiB or more received before the kill", got)
	}
	if dst.HasBlob(layer) {
		t.Fatal("an incomplete blob entered the store")
	}
	if _, err := dst.Resolve("big:1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tag after a failed pull: %v", err)
	}
	// The config blob may or may not have arrived before the kill.
	var configLeft int64
	if !dst.HasBlob(m.Config.Digest) {
		configLeft = m.Config.Size
	}
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	res, err := c.Copy(ctx(t), Registry(ref), Store(dst, "big:1"))
	if err != nil {
		t.Fatal(err)
	}
	// The config blob may be fetched in parallel: look at the layer's
	// requests only.
	want206 := "bytes=" + strconv.FormatInt(got, 10) + "-"
	var layerRanges []string
	for _, r := range p.rangesSeen() {
		if path, rng, _ := strings.Cut(r, " "); strings.HasSuffix(path, layer.String()) {
			layerRanges = append(layerRanges, rng)
		}
	}
	if len(layerRanges) == 0 || layerRanges[len(layerRanges)-1] != want206 {
		t.Fatalf("last request for the layer had Range %q, want %q (all: %q)", layerRanges, want206, p.rangesSeen())
	}
	if want := 8<<20 - got + configLeft; res.Transferred != want {
		t.Fatalf("transferred %d bytes after resuming at %d, want %d (the rest of the layer, and %d bytes of config)", res.Transferred, got, want, configLeft)
	}
	if d, err := dst.Resolve("big:1"); err != nil || d.Digest != want.Digest {
		t.Fatalf("resolve: %v %v", d.Digest, err)
	}
	if err := dst.VerifyBlob(m.Layers[0]); err != nil {
		t.Fatal(err)
	}
	if partialSize(t, dst, layer) != -1 {
		t.Fatal("partial file left after the blob was stored")
	}
}

// A connection cut once in the middle of a blob is retried within the same
// pull, continuing at the byte where it stopped.
func TestPullRetriesWithRange(t *testing.T) {
	host := inProcess(t, false)
	src, dst := openStore(t), openStore(t)
	want := makeImage(t, src, "big:1", 10, 4<<20)
	c := newClient(t, Options{})
	if _, err := c.Copy(ctx(t), Store(src, "big:1"), Registry(mustRef(t, "docker://"+host+"/acme/big:1"))); err != nil {
		t.Fatal(err)
	}
	var cut atomic.Bool
	p := &proxy{upstream: host, onBody: func(path string, sent int64, chunk []byte) bool {
		return sent >= 1<<20 && !cut.Swap(true)
	}}
	res, err := c.Copy(ctx(t), Registry(mustRef(t, "docker://"+startProxy(t, p)+"/acme/big:1")), Store(dst, "big:1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Descriptor.Digest != want.Digest {
		t.Fatalf("digest %s, want %s", res.Descriptor.Digest, want.Digest)
	}
	resumed := false
	for _, r := range p.rangesSeen() {
		_, rng, _ := strings.Cut(r, " ")
		resumed = resumed || strings.HasPrefix(rng, "bytes=") && rng != "bytes=0-"
	}
	if !resumed {
		t.Fatalf("no Range request after the cut: %q", p.rangesSeen())
	}
}

// A registry that serves a blob with one byte changed is caught: the pull
// fails with ErrCorrupt and neither the blob, nor a partial, nor the tag
// is left in the store.
func TestCorruptBlobRejected(t *testing.T) {
	host := distribution(t, registrytest.Options{})
	src, dst := openStore(t), openStore(t)
	want := makeImage(t, src, "app:1", 11, 300<<10)
	m, _ := src.Manifest(want.Digest)
	c := newClient(t, Options{})
	if _, err := c.Copy(ctx(t), Store(src, "app:1"), Registry(mustRef(t, "docker://"+host+"/acme/app:1"))); err != nil {
		t.Fatal(err)
	}
	p := &proxy{upstream: host, onBody: func(path string, sent int64, chunk []byte) bool {
		if strings.HasSuffix(path, m.Layers[0].Digest.String()) && sent == 0 {
			chunk[100] ^= 1
		}
		return false
	}}
	ref := mustRef(t, "docker://"+startProxy(t, p)+"/acme/app:1")
	for _, dest := range []Endpoint{Store(dst, "app:1"), Layout(t.TempDir()+"/l", "1")} {
		_, err := c.Copy(ctx(t), Registry(ref), dest)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: err = %v, want ErrCorrupt", dest, err)
		}
	}
	if dst.HasBlob(m.Layers[0].Digest) || partialSize(t, dst, m.Layers[0].Digest) != -1 {
		t.Fatal("the corrupt blob (or its partial) is in the store")
	}
	if _, err := dst.Resolve("app:1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tag after a corrupt pull: %v", err)
	}
	// a manifest that does not match the digest it was asked for
	p.onBody = nil
	bad := &proxy{upstream: host}
	badHost := startProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			rec := httptest.NewRecorder()
			bad.ServeHTTP(rec, r)
			b, _ := io.ReadAll(rec.Body)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Del("Docker-Content-Digest")
			w.Header().Del("Content-Length")
			w.WriteHeader(rec.Code)
			w.Write([]byte(strings.Replace(string(b), `"schemaVersion":2`, `"schemaVersion": 2`, 1)))
			return
		}
		bad.ServeHTTP(w, r)
	}))
	_, err := c.Copy(ctx(t), Registry(mustRef(t, "docker://"+badHost+"/acme/app@"+want.Digest.String())), Store(dst, "app:1"))
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered manifest: err = %v, want ErrCorrupt", err)
	}
}
