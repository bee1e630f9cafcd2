package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/registry/registrytest"
)

// Tests of stacker compatibility (issue 23): recipes written as stacker
// users write them.

// layoutLayer is one layer of a hand-made OCI layout.
type layoutLayer struct {
	blob        []byte
	mediaType   string
	annotations map[string]string
}

// writeLayout writes an OCI image layout at dir with layers (bottom first)
// tagged tag.
func writeLayout(t *testing.T, dir, tag string, layers []layoutLayer) {
	t.Helper()
	put := func(b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: goruntime.GOARCH},
		Config:   ocispec.ImageConfig{Env: []string{"PATH=/bin", "FROM_LAYOUT=1"}},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	var descs []ocispec.Descriptor
	for _, l := range layers {
		d := put(l.blob)
		d.MediaType, d.Annotations = l.mediaType, l.annotations
		descs = append(descs, d)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, d.Digest)
	}
	cd := put(js(cfg))
	cd.MediaType = ocispec.MediaTypeImageConfig
	md := put(js(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: descs}))
	md.MediaType = ocispec.MediaTypeImageManifest
	md.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{md}}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), js(idx), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// squashLayer builds a verified squashfs layer from tree, as stacker
// writes it (the +verity media type and the older annotation name).
func squashLayer(t *testing.T, tree string) (layoutLayer, ocispec.Descriptor) {
	t.Helper()
	epoch := testEpoch
	b, err := layer.Build(context.Background(), tree, filepath.Join(t.TempDir(), "blob"), layer.BuildOptions{Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := layer.RootHash(b.Descriptor)
	return layoutLayer{blob: blob, mediaType: b.Descriptor.MediaType + "+verity",
		annotations: map[string]string{layer.AnnotationVerityRootOld: root}}, b.Descriptor
}

// busyboxTree is a root with a static busybox as /bin/sh.
func busyboxTree(t *testing.T) string {
	t.Helper()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	if out, err := exec.Command("cp", busybox, filepath.Join(tree, "bin/busybox")).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
	os.WriteFile(filepath.Join(tree, "etc/os-release"), []byte("ID=tarbase\n"), 0o644)
	return tree
}

func tarOf(t *testing.T, tree string) []byte {
	t.Helper()
	b, err := exec.Command("tar", "-C", tree, "--sort=name", "--mtime=@1700000000", "-cf", "-", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unsquashList lists a squashfs layer blob of the store with unsquashfs,
// independently of vessel's own mounts.
func (e *env) unsquashList(d digest.Digest) string {
	e.t.Helper()
	p, err := e.s.BlobPath(d)
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := exec.Command("unsquashfs", "-l", "-d", "", p).CombinedOutput()
	if err != nil {
		e.t.Fatalf("unsquashfs -l %s: %v\n%s", p, err, out)
	}
	return string(out)
}

// TestVerifiedLayerBases: an OCI layout whose layers are already verified
// squashfs (stacker's output), and a mixed one (a tar layer below, a
// squashfs layer above), are bases: tar layers are converted, verified
// layers are reused byte for byte after a verity check, and a layer whose
// root hash does not match is refused.
func TestVerifiedLayerBases(t *testing.T) {
	e := newEnv(t)
	tree := busyboxTree(t)
	lower, lowerDesc := squashLayer(t, tree)
	top := t.TempDir()
	os.MkdirAll(filepath.Join(top, "etc"), 0o755)
	os.WriteFile(filepath.Join(top, "etc/os-release"), []byte("ID=stackerlayer\n"), 0o644)
	upper, upperDesc := squashLayer(t, top)

	writeLayout(t, filepath.Join(e.dir, "stackeroci"), "base", []layoutLayer{lower, upper})
	writeLayout(t, filepath.Join(e.dir, "mixed"), "v1", []layoutLayer{
		{blob: tarOf(t, tree), mediaType: ocispec.MediaTypeImageLayer}, upper})

	rec := `
from-stacker:
  from:
    type: oci
    url: stackeroci:base
  run: |
    cat /etc/os-release > /seen
from-mixed:
  from:
    type: oci
    url: mixed
    tag: v1
  run: |
    cat /etc/os-release > /seen
`
	e.mustBuild(rec)
	for _, n := range []string{"from-stacker", "from-mixed"} {
		img, err := image.Read(e.s, n)
		if err != nil {
			t.Fatal(err)
		}
		ls := img.Layers()
		if len(ls) != 3 {
			t.Fatalf("%s: %d layers, want 3 (two base layers and the run's)", n, len(ls))
		}
		if ls[1].Digest != upperDesc.Digest {
			t.Errorf("%s: the verified base layer was not reused as it is: %s, want %s", n, ls[1].Digest, upperDesc.Digest)
		}
		if n == "from-stacker" && ls[0].Digest != lowerDesc.Digest {
			t.Errorf("%s: lower layer %s, want %s (reused)", n, ls[0].Digest, lowerDesc.Digest)
		}
		if n == "from-mixed" {
			if _, err := layer.ParseMediaType(ls[0].MediaType); err != nil {
				t.Errorf("%s: the tar layer was not converted: %v", n, err)
			}
			if l := e.unsquashList(ls[0].Digest); !strings.Contains(l, "bin/busybox") {
				t.Errorf("%s: converted tar layer lacks bin/busybox:\n%s", n, l)
			}
		}
		if l := e.unsquashList(ls[2].Digest); !strings.Contains(l, "seen") {
			t.Errorf("%s: the run's layer lacks /seen:\n%s", n, l)
		}
		if _, err := image.Verify(e.s, n, nil); err != nil {
			t.Errorf("%s: %v", n, err)
		}
		e.withMounted(n, func(root string) {
			if got := readFile(t, filepath.Join(root, "seen")); got != "ID=stackerlayer\n" {
				t.Errorf("%s: /seen = %q, want the upper squashfs layer's file", n, got)
			}
		})
	}

	// A verified layer whose root hash annotation is wrong is refused,
	// naming the layer and the recipe line.
	bad := upper
	bad.annotations = map[string]string{layer.AnnotationVerityRootOld: strings.Repeat("ab", 32)}
	writeLayout(t, filepath.Join(e.dir, "bad"), "v1", []layoutLayer{lower, bad})
	_, err := e.build("x:\n  from: {type: oci, url: bad:v1}\n  run: true\n", e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "vessel.yaml:2") || !strings.Contains(err.Error(), "layer 2") || !strings.Contains(err.Error(), "verity") {
		t.Errorf("a layer with a wrong root hash: %v", err)
	}
}

// TestOwnPublishedBase: an image vessel built and pushed to a registry is
// a docker base of the next build (a product built on its own published
// base), its layers reused as they are.
func TestOwnPublishedBase(t *testing.T) {
	e := newEnv(t)
	if !registrytest.Available() {
		t.Skip("docker-registry is not installed (make deps installs it)")
	}
	reg := registrytest.Start(t, registrytest.Options{})
	e.mustBuild(baseRecipe)
	baseImg, err := image.Read(e.s, "base")
	if err != nil {
		t.Fatal(err)
	}
	c, err := registry.New(registry.Options{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := registry.ParseReference("docker://" + reg.Host + "/product/base:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(context.Background(), registry.Store(e.s, "base:latest"), registry.Registry(ref)); err != nil {
		t.Fatal(err)
	}
	// A fresh store, as on another build machine.
	e2 := newEnv(t)
	opt := e2.options()
	opt.Registry = func(insecure bool) (*registry.Client, error) {
		return registry.New(registry.Options{PlainHTTP: insecure})
	}
	rec := `
app:
  from:
    type: docker
    url: docker://` + reg.Host + `/product/base:1
    insecure: true
  run: |
    cat /data/keep > /seen
`
	if _, err := e2.build(rec, opt, nil); err != nil {
		t.Fatal(err, e2.out.String())
	}
	app, err := image.Read(e2.s, "app")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := app.Layers()[0].Digest, baseImg.Layers()[0].Digest; got != want {
		t.Errorf("the published base layer was not reused: %s, want %s", got, want)
	}
	e2.withMounted("app", func(root string) {
		if got := readFile(t, filepath.Join(root, "seen")); got != "keep\n" {
			t.Errorf("/seen = %q", got)
		}
	})
}

// TestTarBaseFromImage: `from: type: tar` with a stacker://IMAGE/PATH url
// reads a tarball that an earlier build_only image produced, as stacker
// users chain a rootfs-making image into a final one.
func TestTarBaseFromImage(t *testing.T) {
	e := newEnv(t)
	rec := baseRecipe + `
rootfs-maker:
  from:
    type: built
    tag: base
  build_only: true
  run: |
    echo made-by-maker > /etc/marker
    mkdir -p /out
    cd / && tar -cf /out/rootfs.tar bin etc
final:
  from:
    type: tar
    url: stacker://rootfs-maker/out/rootfs.tar
  run: |
    cat /etc/marker > /seen
    test ! -e /data
`
	res := e.mustBuild(rec)
	var final Built
	for _, im := range res.Images {
		if im.Name == "final" {
			final = im
		}
	}
	if final.Layers != 2 {
		t.Errorf("final has %d layers, want 2 (the converted tarball and the run's)", final.Layers)
	}
	e.withMounted("final", func(root string) {
		if got := readFile(t, filepath.Join(root, "seen")); got != "made-by-maker\n" {
			t.Errorf("/seen = %q", got)
		}
	})
	img, err := image.Read(e.s, "final")
	if err != nil {
		t.Fatal(err)
	}
	if l := e.unsquashList(img.Layers()[0].Digest); !strings.Contains(l, "etc/marker") || strings.Contains(l, "data/keep") {
		t.Errorf("converted tarball layer:\n%s", l)
	}
	// Unchanged: the whole build is cached, the tarball not converted again.
	e.mustBuild(rec)
	if st := e.statuses(); st["final"] != StatusCached || e.runs != 0 {
		t.Errorf("second build: %v, %d runs", st, e.runs)
	}
	// A missing tarball names the url and the line.
	_, err = e.build(baseRecipe+"bad:\n  from: {type: tar, url: stacker://base/nope.tar}\n", e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "stacker://base/nope.tar") || !strings.Contains(err.Error(), "vessel.yaml:20") {
		t.Errorf("missing tarball: %v", err)
	}
}

// TestBindsAndOverlayDirs: stacker's binds (both forms) are read-write in
// the build and never in the layer, a missing source is an error at its
// line, a changed bind rebuilds; overlay_dirs land in the image at dest.
func TestBindsAndOverlayDirs(t *testing.T) {
	e := newEnv(t)
	hostDir := t.TempDir()
	os.WriteFile(filepath.Join(hostDir, "in"), []byte("from-host-dir\n"), 0o644)
	hostFile := filepath.Join(t.TempDir(), "hostfile")
	os.WriteFile(hostFile, []byte("from-host-file\n"), 0o644)
	same := t.TempDir() // bound at its own path, whose parents the base lacks
	os.WriteFile(filepath.Join(same, "s"), []byte("same-path\n"), 0o644)
	e.write(map[string]string{"overlay/share/extra/readme": "overlaid\n"})
	image1 := func(dest string) string {
		return baseRecipe + `
with-binds:
  from:
    type: built
    tag: base
  binds:
    - ` + hostDir + ` -> ` + dest + `
    - source: ` + hostFile + `
      dest: /etc/hostfile
    - ` + same + `
  overlay_dirs:
    - source: overlay
      dest: /usr
  run: |
    cat ` + dest + `/in /etc/hostfile ` + same + `/s > /from-bind
    echo written-in-build > ` + dest + `/out
    ls /usr/share/extra > /overlay-seen
`
	}
	e.mustBuild(image1("/mnt/host"))
	if got := readFile(t, filepath.Join(hostDir, "out")); got != "written-in-build\n" {
		t.Errorf("the bind is not writable: host sees %q", got)
	}
	img, err := image.Read(e.s, "with-binds")
	if err != nil {
		t.Fatal(err)
	}
	ls := img.Layers()
	list := e.unsquashList(ls[len(ls)-1].Digest)
	for _, want := range []string{"from-bind", "usr/share/extra/readme", "overlay-seen"} {
		if !strings.Contains(list, want) {
			t.Errorf("the layer lacks %s:\n%s", want, list)
		}
	}
	for _, not := range []string{"mnt", "hostfile", strings.Split(same, "/")[1]} {
		if strings.Contains(list, "\n"+not) || strings.Contains(list, "/"+not+"\n") {
			t.Errorf("a bind mount point (%s) is in the layer:\n%s", not, list)
		}
	}
	e.withMounted("with-binds", func(root string) {
		if got := readFile(t, filepath.Join(root, "from-bind")); got != "from-host-dir\nfrom-host-file\nsame-path\n" {
			t.Errorf("/from-bind = %q", got)
		}
		if got := readFile(t, filepath.Join(root, "overlay-seen")); got != "readme\n" {
			t.Errorf("/overlay-seen = %q", got)
		}
		if got := readFile(t, filepath.Join(root, "usr/share/extra/readme")); got != "overlaid\n" {
			t.Errorf("overlay dir in the image: %q", got)
		}
	})
	// Unchanged: cached. A changed bind: built again.
	e.mustBuild(image1("/mnt/host"))
	if st := e.statuses(); st["with-binds"] != StatusCached {
		t.Errorf("unchanged binds: %v", st)
	}
	e.mustBuild(image1("/mnt/other"))
	if e.runs != 1 {
		t.Errorf("a changed bind ran %d scripts, want 1", e.runs)
	}
	// A changed overlay dir: built again.
	e.write(map[string]string{"overlay/share/extra/readme": "changed\n"})
	e.mustBuild(image1("/mnt/other"))
	if e.runs != 1 {
		t.Errorf("a changed overlay dir ran %d scripts, want 1", e.runs)
	}
	// A missing source names the line and the path.
	_, err = e.build(baseRecipe+"b:\n  from: {type: built, tag: base}\n  binds:\n    - /nonexistent/vessel-bind -> /x\n  run: true\n", e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "vessel.yaml:22: image") || !strings.Contains(err.Error(), "/nonexistent/vessel-bind") || !strings.Contains(err.Error(), "not on this host") {
		t.Errorf("missing bind source: %v", err)
	}
}

// fileServer serves files with ETag (under /e/) or Last-Modified only
// (under /m/) through http.ServeContent, which answers conditional
// requests with 304, and counts what it answered.
type fileServer struct {
	mu    sync.Mutex
	files map[string]string
	mtime time.Time
	codes map[string][]int // path -> status codes sent
}

func (fs *fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	body, ok := fs.files[r.URL.Path]
	mtime := fs.mtime
	fs.mu.Unlock()
	rec := &codeRecorder{ResponseWriter: w, code: 200}
	defer func() {
		fs.mu.Lock()
		fs.codes[r.URL.Path] = append(fs.codes[r.URL.Path], rec.code)
		fs.mu.Unlock()
	}()
	if !ok {
		http.NotFound(rec, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, "/e/") {
		sum := sha256.Sum256([]byte(body))
		rec.Header().Set("ETag", `"`+hex.EncodeToString(sum[:8])+`"`)
		mtime = time.Time{}
	}
	http.ServeContent(rec, r, path.Base(r.URL.Path), mtime, strings.NewReader(body))
}

func (fs *fileServer) set(p, body string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.files[p] = body
	fs.mtime = fs.mtime.Add(time.Hour)
}

func (fs *fileServer) take() map[string][]int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	c := fs.codes
	fs.codes = map[string][]int{}
	return c
}

type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) { c.code = code; c.ResponseWriter.WriteHeader(code) }

// TestHTTPImports: http(s) imports are downloaded on the host, cached by
// URL and revalidated with ETag or Last-Modified (a 304 reuses the copy),
// or found by hash: with no request at all; --require-hash refuses an
// import without hash: before anything is built.
func TestHTTPImports(t *testing.T) {
	e := newEnv(t)
	fsrv := &fileServer{files: map[string]string{
		"/e/tool.sh":  "echo tool-v1\n",
		"/m/data.txt": "data-v1\n",
		"/e/pinned":   "pinned content\n",
	}, mtime: time.Unix(1600000000, 0).UTC(), codes: map[string][]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(fsrv)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	u := srv.URL
	sum := sha256.Sum256([]byte("pinned content\n"))
	pinned := hex.EncodeToString(sum[:])
	rec := func(extra string) string {
		return baseRecipe + `
app:
  from:
    type: built
    tag: base
  imports:
    - ` + u + `/e/tool.sh
    - path: ` + u + `/m/data.txt?x=1
      dest: /opt/
    - path: ` + u + `/e/pinned
      hash: ` + pinned + `
      dest: /opt/pinned
` + extra + `  run: |
    sh /stacker/imports/tool.sh > /tool-out
`
	}
	e.mustBuild(rec(""))
	if c := fsrv.take(); !reflect.DeepEqual(c, map[string][]int{"/e/tool.sh": {200}, "/m/data.txt": {200}, "/e/pinned": {200}}) {
		t.Errorf("first build requests: %v", c)
	}
	e.withMounted("app", func(root string) {
		for p, want := range map[string]string{"tool-out": "tool-v1\n", "opt/data.txt": "data-v1\n", "opt/pinned": "pinned content\n"} {
			if got := readFile(t, filepath.Join(root, p)); got != want {
				t.Errorf("/%s = %q, want %q", p, got, want)
			}
		}
	})
	// Unchanged: revalidated (304), the pinned file not asked for, cached.
	e.mustBuild(rec(""))
	if c := fsrv.take(); !reflect.DeepEqual(c, map[string][]int{"/e/tool.sh": {304}, "/m/data.txt": {304}}) {
		t.Errorf("second build requests: %v", c)
	}
	if st := e.statuses(); st["app"] != StatusCached {
		t.Errorf("second build: %v", st)
	}
	// Changed on the server (new ETag, new Last-Modified): downloaded, rebuilt.
	fsrv.set("/e/tool.sh", "echo tool-v2\n")
	fsrv.set("/m/data.txt", "data-v2\n")
	e.mustBuild(rec(""))
	if c := fsrv.take(); !reflect.DeepEqual(c, map[string][]int{"/e/tool.sh": {200}, "/m/data.txt": {200}}) {
		t.Errorf("third build requests: %v", c)
	}
	if e.runs != 1 {
		t.Errorf("a changed download ran %d scripts, want 1", e.runs)
	}
	e.withMounted("app", func(root string) {
		if got := readFile(t, filepath.Join(root, "tool-out")); got != "tool-v2\n" {
			t.Errorf("/tool-out = %q after the change", got)
		}
	})

	// --require-hash: refused before any request, naming the line.
	opt := e.options()
	opt.RequireHash = true
	_, err = e.build(rec(""), opt, nil)
	if err == nil || !errors.Is(err, ErrHashRequired) || !strings.Contains(err.Error(), "vessel.yaml:25") || !strings.Contains(err.Error(), "/e/tool.sh") {
		t.Errorf("--require-hash: %v", err)
	}
	if c := fsrv.take(); len(c) != 0 {
		t.Errorf("--require-hash sent requests: %v", c)
	}
	// Pinned only: builds with --require-hash, and offline from the cache.
	onlyPinned := baseRecipe + "pinned:\n  from: {type: built, tag: base}\n  imports:\n    - path: " + u + "/e/pinned\n      hash: " + pinned + "\n  run: cp /stacker/imports/pinned /p\n"
	srv.Close()
	if _, err := e.build(onlyPinned, opt, nil); err != nil {
		t.Errorf("a pinned import, server gone: %v", err)
	}
	// A wrong hash and a missing file name the line.
	srv2 := httptest.NewServer(fsrv)
	defer srv2.Close()
	bad := baseRecipe + "x:\n  from: {type: built, tag: base}\n  imports:\n    - path: " + srv2.URL + "/e/tool.sh\n      hash: " + strings.Repeat("0", 64) + "\n"
	_, err = e.build(bad, e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "vessel.yaml:22") || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Errorf("wrong hash: %v", err)
	}
	_, err = e.build(baseRecipe+"x:\n  from: {type: built, tag: base}\n  imports:\n    - "+srv2.URL+"/nope\n", e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "vessel.yaml:22") || !strings.Contains(err.Error(), "404") {
		t.Errorf("missing file: %v", err)
	}
	// An http(s) tar base: downloaded, converted, revalidated next time.
	fsrv.set("/e/rootfs.tar", string(tarOf(t, busyboxTree(t))))
	fsrv.take()
	tarRec := "fromhttp:\n  from:\n    type: tar\n    url: " + srv2.URL + "/e/rootfs.tar\n  run: cat /etc/os-release > /seen\n"
	e.mustBuild(tarRec)
	e.mustBuild(tarRec)
	if c := fsrv.take(); !reflect.DeepEqual(c, map[string][]int{"/e/rootfs.tar": {200, 304}}) {
		t.Errorf("http tar base requests: %v", c)
	}
	e.withMounted("fromhttp", func(root string) {
		if got := readFile(t, filepath.Join(root, "seen")); got != "ID=tarbase\n" {
			t.Errorf("http tar base: /seen = %q", got)
		}
	})
	// hash: on a tar base: the right one builds (and satisfies
	// --require-hash, which refuses the unpinned base); a wrong one is
	// refused naming the base's line, expected and actual sha256, for an
	// http(s) and a local tarball alike.
	tarBytes := tarOf(t, busyboxTree(t))
	fsrv.set("/e/rootfs.tar", string(tarBytes))
	if err := os.WriteFile(filepath.Join(e.dir, "local.tar"), tarBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	tarDigest := sha256.Sum256(tarBytes)
	tarSum := hex.EncodeToString(tarDigest[:])
	reqOpt := e.options()
	reqOpt.RequireHash = true
	if _, err := e.build(tarRec, reqOpt, nil); !errors.Is(err, ErrHashRequired) || !strings.Contains(err.Error(), "vessel.yaml:3") || !strings.Contains(err.Error(), "tar base needs hash:") {
		t.Errorf("--require-hash, unpinned http tar base: %v", err)
	}
	pinnedTar := "fromhttp:\n  from:\n    type: tar\n    url: " + srv2.URL + "/e/rootfs.tar\n    hash: sha256:" + strings.ToUpper(tarSum) + "\n  run: cat /etc/os-release > /seen\n"
	if _, err := e.build(pinnedTar, reqOpt, nil); err != nil {
		t.Errorf("pinned http tar base: %v", err)
	}
	wrong := strings.Repeat("ab", 32)
	for _, url := range []string{srv2.URL + "/e/rootfs.tar", filepath.Join(e.dir, "local.tar")} {
		badTar := "fromhttp:\n  from:\n    type: tar\n    url: " + url + "\n    hash: " + wrong + "\n  run: cat /etc/os-release > /seen\n"
		_, err := e.build(badTar, e.options(), nil)
		var hm *recipe.HashMismatchError
		if !errors.As(err, &hm) || hm.Expected != wrong || hm.Actual != tarSum || !strings.Contains(err.Error(), "vessel.yaml:3") ||
			!strings.Contains(err.Error(), "expects "+wrong) || !strings.Contains(err.Error(), "has "+tarSum) {
			t.Errorf("tar base %s with a wrong hash: %v", url, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(e.s.Root(), DownloadsDir, "tmp", "*")); len(left) != 0 {
		t.Errorf("temporary downloads left behind: %v", left)
	}
}

// TestSourceDateEpochInRun: the run script sees SOURCE_DATE_EPOCH, as
// under stacker, unless the recipe sets it itself.
func TestSourceDateEpochInRun(t *testing.T) {
	e := newEnv(t)
	e.mustBuild(baseRecipe + `
sde:
  from: {type: built, tag: base}
  run: echo "$SOURCE_DATE_EPOCH" > /sde
own:
  from: {type: built, tag: base}
  build_env: {SOURCE_DATE_EPOCH: "42"}
  run: echo "$SOURCE_DATE_EPOCH" > /sde
`)
	for name, want := range map[string]string{"sde": "1700000000\n", "own": "42\n"} {
		e.withMounted(name, func(root string) {
			if got := readFile(t, filepath.Join(root, "sde")); got != want {
				t.Errorf("%s: /sde = %q, want %q", name, got, want)
			}
		})
	}
}

// TestOldCacheDiscarded: a build cache another vessel wrote (another
// format version) is discarded with a note, and the build goes on.
func TestOldCacheDiscarded(t *testing.T) {
	e := newEnv(t)
	p := filepath.Join(e.s.Root(), "build-cache.json")
	if err := os.WriteFile(p, []byte(`{"version":0,"entries":{}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	e.mustBuild(baseRecipe)
	noted := false
	for _, ev := range e.events {
		if ev.Status == StatusMessage && strings.Contains(ev.Message, "format version 0") && strings.Contains(ev.Message, "discarded") {
			noted = true
		}
	}
	if !noted {
		t.Errorf("no note about the discarded cache in %+v", e.events)
	}
	e.mustBuild(baseRecipe)
	if st := e.statuses(); st["base"] != StatusCached {
		t.Errorf("second build after the rewrite: %v", st)
	}
}

// TestRunChangingNothing: a run that changes no file adds no layer (as in
// stacker); its history entry says empty_layer.
func TestRunChangingNothing(t *testing.T) {
	e := newEnv(t)
	res := e.mustBuild(baseRecipe + `
check:
  from: {type: built, tag: base}
  run: |
    test -f /data/keep
    cat /data/a > /dev/null
`)
	layers := map[string]int{}
	for _, im := range res.Images {
		layers[im.Name] = im.Layers
	}
	if layers["check"] != layers["base"] {
		t.Errorf("check has %d layers, base %d: the run changed nothing", layers["check"], layers["base"])
	}
	img, err := image.Read(e.s, "check")
	if err != nil {
		t.Fatal(err)
	}
	h := img.Config().History
	if len(h) < 2 || !h[len(h)-2].EmptyLayer || h[len(h)-2].CreatedBy != "vessel build of check (run)" {
		t.Errorf("history: %+v", h)
	}
	if len(img.Config().RootFS.DiffIDs) != len(img.Layers()) {
		t.Errorf("diff ids %d, layers %d", len(img.Config().RootFS.DiffIDs), len(img.Layers()))
	}
	e.mustBuild(baseRecipe + "check:\n  from: {type: built, tag: base}\n  run: |\n    test -f /data/keep\n    cat /data/a > /dev/null\n")
	if st := e.statuses(); st["check"] != StatusCached {
		t.Errorf("second build: %v", st)
	}
}

// TestStackerAnnotations: every manifest carries the recipe as written
// (io.stackeroci.stacker.stacker_yaml) and, in a git work tree, its git
// version; a value given with --substitute (a secret) appears in no
// manifest or config; the namespace can be changed.
func TestStackerAnnotations(t *testing.T) {
	e := newEnv(t)
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", e.dir, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	const secret = "s3cr3t-token-value"
	rec := baseRecipe + `
app:
  from: {type: built, tag: base}
  imports:
    - expected
  run: |
    test "${{TOKEN}}" = "$(cat /stacker/imports/expected)"
    echo ok > /ok
`
	e.write(map[string]string{"vessel.yaml": rec, "expected": secret})
	git("init", "-q")
	git("add", "vessel.yaml")
	git("commit", "-q", "-m", "recipe")
	git("tag", "v1.0")
	if _, err := e.build(rec, e.options(), map[string]string{"TOKEN": secret}); err != nil {
		t.Fatal(err, e.out.String())
	}
	img, err := image.Read(e.s, "app")
	if err != nil {
		t.Fatal(err)
	}
	ann := img.Manifest().Annotations
	if want := rec[strings.Index(rec, "\napp:")+1:]; ann["io.stackeroci.stacker.stacker_yaml"] != want || !strings.Contains(want, "${{TOKEN}}") {
		t.Errorf("stacker_yaml annotation: %q", ann["io.stackeroci.stacker.stacker_yaml"])
	}
	if ann["io.stackeroci.stacker.git_version"] != "v1.0" {
		t.Errorf("git_version annotation: %q", ann["io.stackeroci.stacker.git_version"])
	}
	for _, d := range []digest.Digest{img.Digest(), img.Manifest().Config.Digest} {
		p, err := e.s.BlobPath(d)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(readFile(t, p), secret) {
			t.Errorf("the --substitute value is in blob %s:\n%s", d, readFile(t, p))
		}
	}
	// Another namespace: new manifests, the base's layer reused.
	opt := e.options()
	opt.AnnotationsNamespace = "com.example"
	if _, err := e.build(rec, opt, map[string]string{"TOKEN": secret}); err != nil {
		t.Fatal(err)
	}
	if st := e.statuses(); st["base.work"] != StatusReuse {
		t.Errorf("a namespace change rebuilt the base's layer: %v", st)
	}
	img, err = image.Read(e.s, "app")
	if err != nil {
		t.Fatal(err)
	}
	if ann := img.Manifest().Annotations; ann["com.example.stacker.git_version"] != "v1.0" || ann["io.stackeroci.stacker.git_version"] != "" {
		t.Errorf("annotations with namespace com.example: %v", ann)
	}
}

// TestZeroLayerBase: an OCI image with a config and no layers (what
// `umoci new` makes) is a base: an empty root with that config.
func TestZeroLayerBase(t *testing.T) {
	e := newEnv(t)
	writeLayout(t, filepath.Join(e.dir, "empty"), "new", nil)
	if _, err := exec.LookPath("skopeo"); err == nil {
		// the hand-made layout is a valid OCI image to an independent tool
		if out, err := exec.Command("skopeo", "inspect", "oci:"+filepath.Join(e.dir, "empty")+":new").CombinedOutput(); err != nil {
			t.Fatalf("skopeo inspect the zero-layer layout: %v\n%s", err, out)
		}
	}
	res := e.mustBuild(`
onempty:
  from:
    type: oci
    url: empty:new
  imports:
    - /bin/busybox
  run: |
    #!/stacker/imports/busybox sh
    /stacker/imports/busybox mkdir /bin
    /stacker/imports/busybox cp /stacker/imports/busybox /bin/busybox
    echo "$FROM_LAYOUT" > /from-layout
nothing:
  from:
    type: oci
    url: empty:new
`)
	for _, im := range res.Images {
		if im.Layers != 1 {
			t.Errorf("%s: %d layers, want 1", im.Name, im.Layers)
		}
	}
	// A base made by umoci itself, when it is installed.
	if _, err := exec.LookPath("umoci"); err == nil {
		dir := filepath.Join(e.dir, "umoci")
		for _, args := range [][]string{{"init", "--layout", dir}, {"new", "--image", dir + ":new"}} {
			if out, err := exec.Command("umoci", args...).CombinedOutput(); err != nil {
				t.Fatalf("umoci %v: %v\n%s", args, err, out)
			}
		}
		res := e.mustBuild("fromumoci:\n  from: {type: oci, url: umoci:new}\n  imports: [/bin/busybox]\n  run: |\n    #!/stacker/imports/busybox sh\n    /stacker/imports/busybox touch /made\n")
		if res.Images[0].Layers != 1 {
			t.Errorf("on umoci new: %d layers", res.Images[0].Layers)
		}
		e.withMounted("fromumoci", func(root string) {
			if !exists(filepath.Join(root, "made")) {
				t.Error("on umoci new: /made missing")
			}
		})
	}
	e.withMounted("onempty", func(root string) {
		if got := readFile(t, filepath.Join(root, "from-layout")); got != "1\n" {
			t.Errorf("/from-layout = %q: the config's environment did not reach the run", got)
		}
	})
	img, err := image.Read(e.s, "onempty")
	if err != nil {
		t.Fatal(err)
	}
	if env := strings.Join(img.Config().Config.Env, " "); !strings.Contains(env, "FROM_LAYOUT=1") {
		t.Errorf("config env %q lacks the base's", env)
	}
	e.mustBuild(`
onempty:
  from:
    type: oci
    url: empty:new
  imports:
    - /bin/busybox
  run: |
    #!/stacker/imports/busybox sh
    /stacker/imports/busybox mkdir /bin
    /stacker/imports/busybox cp /stacker/imports/busybox /bin/busybox
    echo "$FROM_LAYOUT" > /from-layout
`)
	if st := e.statuses(); st["onempty"] != StatusCached {
		t.Errorf("second build: %v", st)
	}
}

// TestGenerateLabels: stacker's generate_labels runs on the finished image
// and turns the files it writes to /oci-labels into config labels; what
// it changes elsewhere is not in the image; a failure names the line.
func TestGenerateLabels(t *testing.T) {
	e := newEnv(t)
	rec := baseRecipe + `
app:
  from: {type: built, tag: base}
  run: echo 2.1 > /version
  labels:
    fixed: yes
  generate_labels: |
    echo "$(cat /version)" > /oci-labels/org.example.version
    printf 'no newline' > /oci-labels/plain
    echo junk > /junk
`
	e.mustBuild(rec)
	img, err := image.Read(e.s, "app")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"fixed": "yes", "org.example.version": "2.1", "plain": "no newline"}
	if got := img.Config().Config.Labels; !reflect.DeepEqual(got, want) {
		t.Errorf("labels %v, want %v", got, want)
	}
	if len(img.Layers()) != 2 {
		t.Errorf("%d layers, want 2 (generate_labels adds none)", len(img.Layers()))
	}
	e.withMounted("app", func(root string) {
		if exists(filepath.Join(root, "junk")) || exists(filepath.Join(root, "oci-labels")) {
			t.Error("generate_labels changed the image's files")
		}
	})
	e.mustBuild(rec)
	if st := e.statuses(); st["app"] != StatusCached {
		t.Errorf("second build: %v", st)
	}
	_, err = e.build(baseRecipe+"bad:\n  from: {type: built, tag: base}\n  generate_labels: exit 3\n", e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "generate_labels (") || !strings.Contains(err.Error(), "vessel.yaml:21") || !strings.Contains(err.Error(), "code 3") {
		t.Errorf("failing generate_labels: %v", err)
	}
}

// TestBaseMetadataReusesLayers: a change of a base that a run cannot see
// (a label, a new git_version) gives the images built on it a new config
// and manifest but runs nothing again.
func TestBaseMetadataReusesLayers(t *testing.T) {
	e := newEnv(t)
	rec := func(label, env string) string {
		return baseRecipe + `    EXTRA: "` + env + `"
  labels: {l: "` + label + `"}
child:
  from: {type: built, tag: base}
  run: echo child > /child
`
	}
	first := e.mustBuild(rec("a", "1"))
	second := e.mustBuild(rec("b", "1"))
	st := e.statuses()
	if e.runs != 0 || st["base.work"] != StatusReuse || st["child.work"] != StatusReuse {
		t.Errorf("a base label change: runs %d, statuses %v", e.runs, st)
	}
	if first.Images[1].Descriptor.Digest == second.Images[1].Descriptor.Digest {
		t.Error("the child kept its manifest: its config must carry the base's new label")
	}
	img, err := image.Read(e.s, "child")
	if err != nil {
		t.Fatal(err)
	}
	if img.Config().Config.Labels["l"] != "b" {
		t.Errorf("child labels %v, want the base's new l=b", img.Config().Config.Labels)
	}
	// The base's environment is seen by the child's run (and by the
	// base's own): a change there runs both again.
	e.mustBuild(rec("b", "2"))
	if st := e.statuses(); e.runs != 2 || st["child.work"] != StatusRun {
		t.Errorf("a base environment change: runs %d, statuses %v", e.runs, st)
	}
}

// TestVerifiedBaseOtherFormat: squashfs base layers are reused as they
// are under --layer-type erofs; the new layer is erofs, and the image of
// mixed layer types mounts.
func TestVerifiedBaseOtherFormat(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs is not installed (apt-get install erofs-utils)")
	}
	e := newEnv(t)
	lower, lowerDesc := squashLayer(t, busyboxTree(t))
	writeLayout(t, filepath.Join(e.dir, "sq"), "v1", []layoutLayer{lower})
	opt := e.options()
	opt.Format = layer.DefaultFormat(layer.Erofs)
	if _, err := e.build("x:\n  from: {type: oci, url: sq:v1}\n  run: echo mixed > /m\n", opt, nil); err != nil {
		t.Fatal(err, e.out.String())
	}
	img, err := image.Read(e.s, "x")
	if err != nil {
		t.Fatal(err)
	}
	ls := img.Layers()
	if len(ls) != 2 || ls[0].Digest != lowerDesc.Digest {
		t.Fatalf("layers %+v: want the squashfs base layer reused", ls)
	}
	if f, err := layer.ParseMediaType(ls[1].MediaType); err != nil || f.Type != layer.Erofs {
		t.Errorf("new layer %s (%v), want erofs", ls[1].MediaType, err)
	}
	e.withMounted("x", func(root string) {
		if got := readFile(t, filepath.Join(root, "m")); got != "mixed\n" || !exists(filepath.Join(root, "bin/busybox")) {
			t.Errorf("/m = %q", got)
		}
	})
}
