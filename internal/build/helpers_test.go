package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/store"
)

const testEpoch = int64(1700000000)

// busybox is the static busybox the example recipe imports.
var busybox = "/bin/busybox"

func needBuild(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("builds need root for mounts and the OCI runtime (CI runs as root); rootless builds are a separate test")
	}
	for _, tool := range []string{"mksquashfs", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it)", tool)
		}
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices on this machine")
	}
	if out, err := exec.Command(busybox, "true").CombinedOutput(); err != nil || !isStatic(busybox) {
		t.Skipf("%s is not a static busybox (apt-get install busybox-static): %v %s", busybox, err, out)
	}
}

func isStatic(p string) bool {
	out, _ := exec.Command("file", "-L", p).Output()
	return len(out) == 0 || bytes.Contains(out, []byte("statically linked")) || bytes.Contains(out, []byte("static-pie"))
}

// env is one clean store and run directory.
type env struct {
	t      *testing.T
	s      *store.Store
	m      *mount.Manager
	run    string
	dir    string // recipe directory
	mu     sync.Mutex
	events []Event
	runs   int // containers started
	out    bytes.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	needBuild(t)
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	e := &env{t: t, s: s, m: &mount.Manager{Run: run}, run: run, dir: t.TempDir()}
	t.Cleanup(func() { e.assertNoLeaks() })
	return e
}

func (e *env) assertNoLeaks() {
	t := e.t
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (strings.HasPrefix(f[4], e.run) || strings.HasPrefix(f[4], e.s.Root())) {
			t.Errorf("mount left behind: %s", line)
		}
	}
	if rs, _ := os.ReadDir(filepath.Join(e.run, "mounts")); len(rs) != 0 {
		t.Errorf("%d mount records left behind", len(rs))
	}
	if ts, _ := filepath.Glob(filepath.Join(e.s.Root(), "tmp", "*")); len(ts) != 0 {
		t.Errorf("temporary files left behind: %v", ts)
	}
}

// write writes files (relative to the recipe directory).
func (e *env) write(files map[string]string) {
	for name, content := range files {
		p := filepath.Join(e.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			e.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) options() Options {
	epoch := testEpoch
	return Options{
		Store: e.s, Mounts: e.m, Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch, Output: &e.out,
		Launcher: func() (*container.Launcher, error) {
			rt, _, err := ociruntime.Detect(context.Background(), "runc", filepath.Join(e.run, "runtime"))
			if err != nil {
				return nil, err
			}
			return &container.Launcher{Mounts: e.m, Runtime: rt}, nil
		},
		Progress: func(ev Event) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.events = append(e.events, ev)
			if ev.Status == StatusRun {
				e.runs++
			}
		},
	}
}

// build parses the recipe text and builds it; events are reset first.
func (e *env) build(text string, opt Options, subs map[string]string) (*Result, error) {
	e.t.Helper()
	p := filepath.Join(e.dir, "vessel.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	f, err := recipe.ParseFile(p, recipe.Options{Substitutions: subs})
	if err != nil {
		e.t.Fatal(err)
	}
	e.events, e.runs = nil, 0
	e.out.Reset()
	return Build(context.Background(), f, opt)
}

func (e *env) mustBuild(text string) *Result {
	e.t.Helper()
	res, err := e.build(text, e.options(), nil)
	if err != nil {
		e.t.Fatalf("build: %v\noutput:\n%s", err, e.out.String())
	}
	return res
}

// statuses maps image name -> the last status of each image, ignoring
// tagging.
func (e *env) statuses() map[string]string {
	out := map[string]string{}
	for _, ev := range e.events {
		switch ev.Status {
		case StatusCached, StatusBuilt:
			out[ev.Image] = ev.Status
		}
		if ev.Status == StatusRun || ev.Status == StatusReuse {
			out[ev.Image+".work"] = ev.Status
		}
	}
	return out
}

// withMounted mounts ref read-only and calls fn with its root.
func (e *env) withMounted(ref string, fn func(root string)) {
	e.t.Helper()
	img, err := mount.LocalImage(e.s, ref)
	if err != nil {
		e.t.Fatal(err)
	}
	target := filepath.Join(e.t.TempDir(), "root")
	if _, err := e.m.Mount(context.Background(), img, "check", target, mount.Self(), mount.Options{}); err != nil {
		e.t.Fatal(err)
	}
	defer func() {
		if err := e.m.Unmount("check"); err != nil {
			e.t.Error(err)
		}
	}()
	fn(target)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return !errors.Is(err, os.ErrNotExist)
}

// baseRecipe is busybox on scratch, as examples/vessel.yaml does it.
const baseRecipe = `
base:
  from:
    type: scratch
  imports:
    - ` + "/bin/busybox" + `
  run: |
    #!/stacker/imports/busybox sh
    set -e
    /stacker/imports/busybox mkdir -p /bin /etc /data/dir
    /stacker/imports/busybox cp /stacker/imports/busybox /bin/busybox
    /bin/busybox --install -s /bin
    echo 'root:x:0:0:root:/:/bin/sh' > /etc/passwd
    echo a > /data/a
    echo x > /data/dir/x
    echo keep > /data/keep
  environment:
    PATH: /bin
`

func testTime() time.Time { return time.Unix(1600000000, 0) }

// makeLayout writes an OCI image layout at dir with one uncompressed tar
// layer made from tree, tagged tag.
func makeLayout(t *testing.T, dir, tag, tree string) {
	t.Helper()
	tarball, err := exec.Command("tar", "-C", tree, "--sort=name", "--mtime=@1700000000", "-cf", "-", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
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
	ld := put(tarball)
	ld.MediaType = ocispec.MediaTypeImageLayer
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: goruntime.GOARCH},
		Config:   ocispec.ImageConfig{Env: []string{"PATH=/bin", "FROM_LAYOUT=1"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{ld.Digest}},
	}
	cd := put(js(cfg))
	cd.MediaType = ocispec.MediaTypeImageConfig
	md := put(js(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{ld}}))
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
