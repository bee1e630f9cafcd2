package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rogpeppe/go-internal/testscript"
)

// TestHostileScript runs the hostile-registry stories
// (testdata/script/hostile*.txtar) against an in-process registry that
// misbehaves on purpose ($HOSTILE): each repository acme/MODE answers
// blob requests its own wrong way (see hostileRegistry). TestScript runs
// the same files without it; they skip there ([!hostile]).
func TestHostileScript(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "script", "hostile*.txtar"))
	jsonCheck := checkStoriesJSON(t)
	testscript.Run(t, testscript.Params{
		Files: files,
		Setup: func(e *testscript.Env) error {
			e.Setenv("VESSEL_ROOT", e.WorkDir+"/store")
			e.Setenv("VESSEL_RUN", e.WorkDir+"/run")
			jsonCheck(e.Setenv)
			e.Defer(cleanupRun(e.WorkDir + "/run"))
			e.Setenv("SOURCE_DATE_EPOCH", "1700000000")
			h := newHostileRegistry()
			e.Defer(h.close)
			e.Setenv("HOSTILE", strings.TrimPrefix(h.srv.URL, "http://"))
			e.Values["hostile"] = h
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// leaked: the blob storage host the registry redirected to saw
			// an Authorization header (it must not).
			"leaked": func(ts *testscript.TestScript, neg bool, args []string) {
				h := ts.Value("hostile").(*hostileRegistry)
				h.mu.Lock()
				seen, leaked := h.storageSeen, h.leaked
				h.mu.Unlock()
				if seen == 0 {
					ts.Fatalf("the blob storage host saw no request")
				}
				if neg && len(leaked) > 0 {
					ts.Fatalf("credentials sent to the blob storage host: %v", leaked)
				}
				if !neg && len(leaked) == 0 {
					ts.Fatalf("no credentials reached the blob storage host")
				}
				if neg {
					ts.Logf("%d requests to the blob storage host, none with credentials", seen)
				}
			},
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "hostile":
				return true, nil
			case "root":
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q (known: hostile, root, exec:NAME)", cond)
		},
	})
}

// hostileRegistry serves one small image in every repository acme/MODE;
// manifests are always right, blobs are served the MODE's way:
//
//	good      correctly
//	empty     200 with an empty body
//	stall     the first 10 bytes, then nothing (until the client gives up)
//	range     206 with a Content-Range the client did not ask for
//	huge      a manifest whose layer claims 1 PiB
//	redirect  Basic auth required; blobs redirect (307) to another host
//	docker    Docker media types: a manifest list of a v2 schema 2 manifest
//	whiteout  a tar layer whose whiteout ".wh..." names the parent directory
type hostileRegistry struct {
	srv, storage *httptest.Server
	blobs        map[digest.Digest][]byte
	manifests    map[string][]byte // MODE -> root manifest
	types        map[string]string // MODE -> its media type

	mu          sync.Mutex
	storageSeen int
	leaked      []string
}

func newHostileRegistry() *hostileRegistry {
	h := &hostileRegistry{blobs: map[digest.Digest][]byte{}, manifests: map[string][]byte{}, types: map[string]string{}}
	put := func(b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		h.blobs[d] = b
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	image := func(layerType string, layer []byte, cfgType, mt string) []byte {
		cfg := put([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"comment":"` + digest.FromBytes(layer).Encoded()[:8] + `"}`))
		cfg.MediaType = cfgType
		l := put(layer)
		l.MediaType = layerType
		m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Config: cfg, Layers: []ocispec.Descriptor{l}})
		return m
	}
	// each mode its own blobs (of the same sizes), so no pull finds them
	// already in the store
	for _, mode := range []string{"good", "empty", "stall", "range", "redirect", "huge"} {
		layer := bytes.Repeat([]byte("layer content "), 100)
		copy(layer, fmt.Sprintf("%-10s", mode))
		h.manifests[mode] = image("application/vnd.vessel.test.layer", layer, ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageManifest)
		h.types[mode] = ocispec.MediaTypeImageManifest
	}
	var huge ocispec.Manifest
	json.Unmarshal(h.manifests["huge"], &huge)
	huge.Layers[0].Size = 1 << 50
	h.manifests["huge"], _ = json.Marshal(huge)
	h.types["huge"] = ocispec.MediaTypeImageManifest

	dm := image("application/vnd.docker.image.rootfs.diff.tar", []byte("docker layer"), "application/vnd.docker.container.image.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
	dmDesc := put(dm)
	dmDesc.MediaType = "application/vnd.docker.distribution.manifest.v2+json"
	dmDesc.Platform = &ocispec.Platform{Architecture: "amd64", OS: "linux"}
	h.manifests["docker"], _ = json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": []ocispec.Descriptor{dmDesc}})
	h.types["docker"] = "application/vnd.docker.distribution.manifest.list.v2+json"

	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, name := range []string{"etc/", "etc/keep", "etc/.wh..."} {
		hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}
		if strings.HasSuffix(name, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		}
		tw.WriteHeader(hdr)
	}
	tw.Close()
	h.manifests["whiteout"] = image(ocispec.MediaTypeImageLayer, tb.Bytes(), ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageManifest)
	h.types["whiteout"] = ocispec.MediaTypeImageManifest

	h.storage = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.storageSeen++
		if a := r.Header.Get("Authorization"); a != "" {
			h.leaked = append(h.leaked, r.Method+" "+r.URL.Path+": "+a)
		}
		h.mu.Unlock()
		b, ok := h.blobs[digest.Digest(strings.TrimPrefix(r.URL.Path, "/storage/"))]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	h.srv = httptest.NewServer(http.HandlerFunc(h.serve))
	return h
}

func (h *hostileRegistry) close() { h.srv.Close(); h.storage.Close() }

func (h *hostileRegistry) serve(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/acme/"), "/")
	if len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	mode, kind, ref := parts[0], parts[1], parts[2]
	if mode == "redirect" && r.Header.Get("Authorization") == "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="hostile"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	root, ok := h.manifests[mode]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if kind == "manifests" {
		b := root
		if d, err := digest.Parse(ref); err == nil {
			if b, ok = h.blobs[d]; !ok && d != digest.FromBytes(root) {
				http.NotFound(w, r)
				return
			}
			if !ok {
				b = root
			}
		}
		var mt struct {
			MediaType string `json:"mediaType"`
		}
		json.Unmarshal(b, &mt)
		w.Header().Set("Content-Type", mt.MediaType)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
		w.Write(b)
		return
	}
	b, ok := h.blobs[digest.Digest(ref)]
	if kind != "blobs" || !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		return
	}
	switch mode {
	case "empty":
		w.Header().Set("Content-Length", "0")
	case "stall":
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b[:10])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case "range":
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 1-%d/%d", len(b)-1, len(b)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(b[1:])
	case "redirect":
		http.Redirect(w, r, h.storage.URL+"/storage/"+ref, http.StatusTemporaryRedirect)
	default:
		w.Write(b)
	}
}
