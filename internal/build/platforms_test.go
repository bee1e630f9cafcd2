package build

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/registry/registrytest"
)

// arm64Busybox is Debian's static arm64 busybox, unpacked by scripts/deps.sh.
const arm64Busybox = "/var/cache/vessel-test/arm64/busybox"

// needArm64 skips unless arm64 programs can run here, registering
// qemu-aarch64-static (F flag) when it is installed but not registered.
// The registration is left in place: it is what a build machine wants, and
// tests running at the same time may use it.
func needArm64(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(arm64Busybox); err != nil {
		t.Skipf("%s is missing: run 'make deps' (it unpacks busybox-static:arm64)", arm64Busybox)
	}
	if binfmt.Check("arm64") == nil {
		return
	}
	es, err := binfmt.Plan([]string{"arm64"}, "", "")
	if err != nil {
		t.Skipf("no arm64 emulation: %v", err)
	}
	if _, err := binfmt.Install("", es); err != nil {
		t.Fatalf("register qemu-aarch64: %v", err)
	}
}

// makeMultiLayout writes an OCI layout whose tag names an image index
// with one tar-layer image per platform, made from trees[arch].
func makeMultiLayout(t *testing.T, dir, tag string, trees map[string]string) {
	t.Helper()
	put := func(mt string, b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}
	}
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, arch := range []string{"amd64", "arm64"} {
		tarball, err := exec.Command("tar", "-C", trees[arch], "--sort=name", "--mtime=@1700000000", "-cf", "-", ".").Output()
		if err != nil {
			t.Fatal(err)
		}
		ld := put(ocispec.MediaTypeImageLayer, tarball)
		p := ocispec.Platform{OS: "linux", Architecture: arch}
		if arch == "arm64" {
			p.Variant = "v8"
		}
		cd := put(ocispec.MediaTypeImageConfig, js(ocispec.Image{Platform: p,
			Config: ocispec.ImageConfig{Env: []string{"PATH=/bin"}},
			RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{ld.Digest}}}))
		md := put(ocispec.MediaTypeImageManifest, js(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{ld}}))
		md.Platform = &p
		idx.Manifests = append(idx.Manifests, md)
	}
	id := put(ocispec.MediaTypeImageIndex, js(idx))
	id.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	top := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{id}}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), js(top), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPlatforms builds one recipe for amd64 and arm64 on a multi-arch OCI
// layout base: each build picks its platform's base, the arm64 run script
// runs through qemu-user, the tag names an index of both, and a rebuild is
// cached per platform.
func TestPlatforms(t *testing.T) {
	e := newEnv(t)
	if platform.Host().Architecture != "amd64" {
		t.Skip("the test's base images are amd64 and arm64 busybox: it runs on amd64")
	}
	needArm64(t)
	trees := map[string]string{}
	for arch, bb := range map[string]string{"amd64": busybox, "arm64": arm64Busybox} {
		tree := t.TempDir()
		os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
		if out, err := exec.Command("cp", bb, filepath.Join(tree, "bin/busybox")).CombinedOutput(); err != nil {
			t.Fatal(err, string(out))
		}
		os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
		trees[arch] = tree
	}
	makeMultiLayout(t, filepath.Join(e.dir, "layout"), "bb", trees)
	text := `
app:
  from: {type: oci, url: layout:bb}
  run: |
    /bin/busybox --install -s /bin
    uname -m > /machine
  cmd: [/bin/uname, -m]
`
	p := filepath.Join(e.dir, "vessel.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	load := func(arch string) (*recipe.File, error) { return recipe.ParseFile(p, recipe.Options{Arch: arch}) }
	res, err := BuildPlatforms(context.Background(), []string{"amd64", "arm64"}, load, e.options())
	if err != nil {
		t.Fatalf("build: %v\n%s", err, e.out.String())
	}
	if len(res.Indexes) != 1 || res.Indexes[0].Ref != "app:latest" || strings.Join(res.Indexes[0].Platforms, " ") != "linux/amd64 linux/arm64/v8" {
		t.Fatalf("indexes: %+v", res.Indexes)
	}
	if e.runs != 2 {
		t.Errorf("%d scripts ran, want 2", e.runs)
	}
	tagged, err := e.s.Resolve("app")
	if err != nil || tagged.MediaType != ocispec.MediaTypeImageIndex || tagged.Digest != res.Indexes[0].Descriptor.Digest {
		t.Fatalf("app:latest = %+v, %v (want the index)", tagged, err)
	}
	for arch, machine := range map[string]string{"amd64": "x86_64\n", "arm64": "aarch64\n"} {
		d, err := e.s.ResolveImage("app", ocispec.Platform{Architecture: arch})
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.s.Manifest(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := e.s.Config(m.Config)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Architecture != arch || cfg.OS != "linux" {
			t.Errorf("%s image config: %s/%s", arch, cfg.OS, cfg.Architecture)
		}
		e.withMounted(d.Digest.String(), func(root string) {
			if got := readFile(t, filepath.Join(root, "machine")); got != machine {
				t.Errorf("%s: the script saw uname -m %q, want %q", arch, got, machine)
			}
			if out, _ := exec.Command("file", "-L", filepath.Join(root, "bin/busybox")).Output(); arch == "arm64" && !strings.Contains(string(out), "aarch64") {
				t.Errorf("arm64 image has a %s busybox", out)
			}
		})
	}
	// Independent checker: skopeo reads the index and picks each platform.
	if _, err := exec.LookPath("skopeo"); err == nil {
		out, err := exec.Command("skopeo", "inspect", "--raw", "oci:"+filepath.Join(e.s.Root(), "oci")+":app:latest").Output()
		if err != nil {
			t.Fatalf("skopeo inspect --raw: %v", err)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(out, &idx); err != nil || len(idx.Manifests) != 2 || idx.Manifests[1].Platform.Architecture != "arm64" || idx.Manifests[1].Platform.Variant != "v8" {
			t.Fatalf("skopeo sees %s (%v)", out, err)
		}
		out, err = exec.Command("skopeo", "inspect", "--config", "--override-arch", "arm64", "oci:"+filepath.Join(e.s.Root(), "oci")+":app:latest").Output()
		if err != nil || !strings.Contains(string(out), `"architecture": "arm64"`) {
			t.Fatalf("skopeo arm64 config: %s %v", out, err)
		}
	}
	// Again: every platform cached, the same index.
	e.events, e.runs = nil, 0
	res2, err := BuildPlatforms(context.Background(), []string{"amd64", "arm64"}, load, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if e.runs != 0 || res2.Indexes[0].Descriptor.Digest != res.Indexes[0].Descriptor.Digest {
		t.Errorf("rebuild: %d runs, index %s (was %s)", e.runs, res2.Indexes[0].Descriptor.Digest, res.Indexes[0].Descriptor.Digest)
	}
	// One architecture alone is the same image as in the index.
	f, err := load("arm64")
	if err != nil {
		t.Fatal(err)
	}
	one, err := Build(context.Background(), f, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if one.Images[0].Descriptor.Digest != res.Images[1].Descriptor.Digest || one.Images[0].Cache != "image" {
		t.Errorf("arm64 alone: %+v, want the cached %s", one.Images[0], res.Images[1].Descriptor.Digest)
	}
	// A platform the base index does not have is refused, naming what it has.
	_, err = e.build("other:\n  from: {type: oci, url: layout:bb}\n  arch: riscv64\n", e.options(), nil)
	if err == nil || !strings.Contains(err.Error(), "no image for this platform: want linux/riscv64, the index has linux/amd64, linux/arm64/v8") {
		t.Errorf("riscv64 on an amd64+arm64 base: %v", err)
	}
}

// TestDockerBasePlatforms pushes a two-arch index to a real registry and
// builds on it for both architectures: each build pulls the index once and
// converts its own platform's image.
func TestDockerBasePlatforms(t *testing.T) {
	e := newEnv(t)
	if platform.Host().Architecture != "amd64" {
		t.Skip("the test's base images are amd64 and arm64 busybox: it runs on amd64")
	}
	if !registrytest.Available() {
		t.Skip("docker-registry is not installed (make deps installs it)")
	}
	needArm64(t)
	reg := registrytest.Start(t, registrytest.Options{})
	trees := map[string]string{}
	for arch, bb := range map[string]string{"amd64": busybox, "arm64": arm64Busybox} {
		tree := t.TempDir()
		os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
		if out, err := exec.Command("cp", bb, filepath.Join(tree, "bin/busybox")).CombinedOutput(); err != nil {
			t.Fatal(err, string(out))
		}
		os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
		trees[arch] = tree
	}
	layout := filepath.Join(t.TempDir(), "layout")
	makeMultiLayout(t, layout, "bb", trees)
	c, err := registry.New(registry.Options{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := registry.ParseReference("docker://" + reg.Host + "/bb:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(context.Background(), registry.Layout(layout, "bb"), registry.Registry(ref)); err != nil {
		t.Fatal(err)
	}
	opt := e.options()
	opt.Registry = func(insecure bool) (*registry.Client, error) {
		return registry.New(registry.Options{PlainHTTP: insecure})
	}
	p := filepath.Join(e.dir, "vessel.yaml")
	text := "app:\n  from: {type: docker, url: \"docker://" + reg.Host + "/bb:1\", insecure: true}\n  run: /bin/busybox uname -m > /machine\n"
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	load := func(arch string) (*recipe.File, error) { return recipe.ParseFile(p, recipe.Options{Arch: arch}) }
	if _, err := BuildPlatforms(context.Background(), []string{"arm64", "amd64"}, load, opt); err != nil {
		t.Fatalf("build: %v\n%s", err, e.out.String())
	}
	for arch, machine := range map[string]string{"amd64": "x86_64\n", "arm64": "aarch64\n"} {
		d, err := e.s.ResolveImage("app", ocispec.Platform{Architecture: arch})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.s.CheckPlatform(d, ocispec.Platform{Architecture: arch}); err != nil {
			t.Error(err)
		}
		e.withMounted(d.Digest.String(), func(root string) {
			if got := readFile(t, filepath.Join(root, "machine")); got != machine {
				t.Errorf("%s: uname -m %q, want %q", arch, got, machine)
			}
		})
	}
}
