package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/verity"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it)", tool)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	d := t.TempDir()
	for name, body := range files {
		p := filepath.Join(d, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(body), 0o644))
	}
	return d
}

func newStore(t *testing.T) *store.Store {
	s, err := store.Open(t.TempDir())
	must(t, err)
	return s
}

var epoch = int64(1700000000)

func TestCreateIsReproducibleAcrossStores(t *testing.T) {
	need(t, "mksquashfs")
	base := map[string]string{"bin/x": "binary", "etc/os-release": "ID=vessel\n"}
	app := map[string]string{"app/run": "#!/bin/sh\necho hi\n"}
	var digests []digest.Digest
	for i := 0; i < 2; i++ {
		s := newStore(t)
		res, err := Create(context.Background(), s, "demo:1", []string{tree(t, base), tree(t, app)}, CreateOptions{SourceDateEpoch: &epoch})
		must(t, err)
		digests = append(digests, res.Descriptor.Digest)
		if _, err := Verify(s, "demo:1", nil); err != nil {
			t.Fatal(err)
		}
	}
	if digests[0] != digests[1] {
		t.Fatalf("same input, different digests: %v", digests)
	}
}

func TestStoreIsReadableBySkopeoAndUmoci(t *testing.T) {
	need(t, "mksquashfs", "skopeo", "umoci")
	s := newStore(t)
	res, err := Create(context.Background(), s, "demo:1", []string{tree(t, map[string]string{"f": "x"})}, CreateOptions{})
	must(t, err)
	out, err := exec.Command("skopeo", "inspect", "--raw", "oci:"+s.LayoutDir()+":demo:1").Output()
	must(t, err)
	if digest.FromBytes(out) != res.Descriptor.Digest {
		t.Fatalf("skopeo reads manifest %s, vessel wrote %s", digest.FromBytes(out), res.Descriptor.Digest)
	}
	out, err = exec.Command("umoci", "ls", "--layout", s.LayoutDir()).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "demo:1" {
		t.Fatalf("umoci ls: %q %v", out, err)
	}
}

func TestVerifyNamesTheBrokenLayer(t *testing.T) {
	need(t, "mksquashfs")
	s := newStore(t)
	noise := bytes.Repeat([]byte("vessel"), 1) // small layer first
	big := make([]byte, 200000)
	rand.New(rand.NewSource(7)).Read(big) // incompressible: many blocks
	res, err := Create(context.Background(), s, "demo:1", []string{tree(t, map[string]string{"a": string(noise)}), tree(t, map[string]string{"big": string(big)})}, CreateOptions{})
	must(t, err)
	l2 := res.Layers[1]
	p, _ := s.BlobPath(l2.Digest)
	orig, _ := os.ReadFile(p)

	// a flipped byte: the blob digest check catches it first and names layer 2
	bad := bytes.Clone(orig)
	bad[5*4096+10] ^= 0x40 // inside data block 5
	must(t, os.WriteFile(p, bad, 0o644))
	_, err = Verify(s, "demo:1", nil)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Layer != 2 || !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "layer 2") {
		t.Fatalf("err = %v", err)
	}

	// the same flip with the descriptor digest "fixed up" (an attacker who
	// also rewrote the manifest cannot fix the verity root pinned in it):
	// verity names the block
	must(t, os.WriteFile(p, orig, 0o644))
	f, _ := os.Open(p)
	g, err := layer.Locate(f, l2)
	f.Close()
	must(t, err)
	err = verity.Verify(bytes.NewReader(bad), bytes.NewReader(bad), g.Params, g.Root)
	var ce *verity.CorruptionError
	if !errors.As(err, &ce) || ce.Block != 5 {
		t.Fatalf("verity: %v", err)
	}

	// truncated blob
	must(t, os.WriteFile(p, orig[:len(orig)-10], 0o644))
	if _, err := Verify(s, "demo:1", nil); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated: %v", err)
	}
	// missing blob
	must(t, os.Remove(p))
	if _, err := Verify(s, "demo:1", nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	// unknown image
	if _, err := Verify(s, "nope:1", nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
}

func TestCreateFailureTagsNothing(t *testing.T) {
	need(t, "mksquashfs")
	s := newStore(t)
	_, err := Create(context.Background(), s, "demo:1", []string{tree(t, map[string]string{"a": "x"}), "/does/not/exist"}, CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "layer 2 (/does/not/exist)") {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Resolve("demo:1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("a failed create left a tag")
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "tmp"))
	if len(ents) != 0 {
		t.Fatalf("temp files left behind: %v", ents)
	}
}

// ociLayout writes an OCI layout with the given tar layers (compressed as
// named by each media type) and returns its directory.
func ociLayout(t *testing.T, tag string, layers map[string][]byte, order []string) string {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	must(t, os.MkdirAll(blobs, 0o755))
	put := func(b []byte) digest.Digest {
		d := digest.FromBytes(b)
		must(t, os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644))
		return d
	}
	var descs []ocispec.Descriptor
	var diffs []digest.Digest
	for _, mt := range order {
		raw := layers[mt]
		diffs = append(diffs, digest.FromBytes(raw))
		var b bytes.Buffer
		switch {
		case strings.HasSuffix(mt, "+gzip"):
			z := gzip.NewWriter(&b)
			z.Write(raw)
			z.Close()
		case strings.HasSuffix(mt, "+zstd"):
			z, _ := zstd.NewWriter(&b)
			z.Write(raw)
			z.Close()
		default:
			b.Write(raw)
		}
		descs = append(descs, ocispec.Descriptor{MediaType: strings.SplitN(mt, "#", 2)[0], Digest: put(b.Bytes()), Size: int64(b.Len())})
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffs},
		Config: ocispec.ImageConfig{Env: []string{"PATH=/bin"}, Entrypoint: []string{"/bin/sh"}}})
	cd := put(cfg)
	m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: int64(len(cfg))}, Layers: descs})
	md := put(m)
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(m)),
		Annotations: map[string]string{ocispec.AnnotationRefName: tag}}}})
	must(t, os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
	return dir
}

func tarOf(t *testing.T, entries ...[3]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e[0], Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e[2]))}
		switch e[1] {
		case "dir":
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case "symlink":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e[2], 0
		}
		must(t, tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e[2]))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func mount(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v: %v: %s", args, err, out)
	}
	target := args[len(args)-1]
	t.Cleanup(func() {
		if out, err := exec.Command("umount", target).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", target, err, out)
		}
	})
}

func TestConvertTarLayersStackLikeOCI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("convert needs root (runs in CI as root)")
	}
	need(t, "mksquashfs", "mount")
	l1 := tarOf(t, [3]string{"etc/", "dir", ""}, [3]string{"etc/passwd", "", "root:x:0:0"}, [3]string{"etc/keep", "", "kept"},
		[3]string{"cache/", "dir", ""}, [3]string{"cache/old", "", "old"}, [3]string{"bin/", "dir", ""}, [3]string{"bin/sh", "symlink", "/bin/busybox"})
	l2 := tarOf(t, [3]string{"etc/.wh.passwd", "", ""}, [3]string{"cache/.wh..wh..opq", "", ""}, [3]string{"cache/new", "", "new"})
	l3 := tarOf(t, [3]string{"app", "", "zstd layer"})
	dir := ociLayout(t, "v1", map[string][]byte{
		ocispec.MediaTypeImageLayerGzip: l1, ocispec.MediaTypeImageLayer: l2, ocispec.MediaTypeImageLayerZstd: l3,
	}, []string{ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayer, ocispec.MediaTypeImageLayerZstd})

	s := newStore(t)
	res, err := Convert(context.Background(), s, Source{Dir: dir, Tag: "v1"}, "conv:1", ConvertOptions{})
	must(t, err)
	if len(res.Layers) != 3 {
		t.Fatalf("%d layers", len(res.Layers))
	}
	if _, err := Verify(s, "conv:1", nil); err != nil {
		t.Fatal(err)
	}
	info, err := Read(s, "conv:1")
	must(t, err)
	if strings.Join(info.Config().Config.Entrypoint, " ") != "/bin/sh" || info.Config().Config.Env[0] != "PATH=/bin" {
		t.Errorf("config not carried over: %+v", info.Config().Config)
	}
	// stack the three layers with overlayfs and look at the result
	var lowers []string
	for i, l := range res.Layers {
		p, _ := s.BlobPath(l.Digest)
		g, err := func() (layer.Geometry, error) { f, _ := os.Open(p); defer f.Close(); return layer.Locate(f, l) }()
		must(t, err)
		mnt := filepath.Join(t.TempDir(), fmt.Sprint(i))
		must(t, os.Mkdir(mnt, 0o755))
		mount(t, "-t", "squashfs", "-o", fmt.Sprintf("loop,ro,sizelimit=%d", g.DataSize), p, mnt)
		lowers = append([]string{mnt}, lowers...)
	}
	merged := t.TempDir()
	mount(t, "-t", "overlay", "overlay", "-o", "lowerdir="+strings.Join(lowers, ":"), merged)
	check := func(name, want string) {
		b, err := os.ReadFile(filepath.Join(merged, name))
		if want == "" {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: should be deleted, got %q %v", name, b, err)
			}
			return
		}
		if string(b) != want {
			t.Errorf("%s = %q (%v), want %q", name, b, err, want)
		}
	}
	check("etc/passwd", "")
	check("etc/keep", "kept")
	check("cache/old", "")
	check("cache/new", "new")
	check("app", "zstd layer")
	if l, _ := os.Readlink(filepath.Join(merged, "bin/sh")); l != "/bin/busybox" {
		t.Errorf("bin/sh -> %q", l)
	}
}

func TestConvertRejectsBadSources(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("convert needs root (runs in CI as root)")
	}
	need(t, "mksquashfs")
	s := newStore(t)
	escape := ociLayout(t, "x", map[string][]byte{ocispec.MediaTypeImageLayer: tarOf(t, [3]string{"../../etc/evil", "", "x"})}, []string{ocispec.MediaTypeImageLayer})
	_, err := Convert(context.Background(), s, Source{Dir: escape, Tag: "x"}, "bad:1", ConvertOptions{})
	var ue *layer.UnsafeEntryError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "../../etc/evil") {
		t.Fatalf("escape: %v", err)
	}

	good := ociLayout(t, "x", map[string][]byte{ocispec.MediaTypeImageLayerGzip: tarOf(t, [3]string{"f", "", "data"})}, []string{ocispec.MediaTypeImageLayerGzip})
	// tamper with the layer blob: its digest no longer matches
	ents, _ := os.ReadDir(filepath.Join(good, "blobs/sha256"))
	for _, e := range ents {
		p := filepath.Join(good, "blobs/sha256", e.Name())
		b, _ := os.ReadFile(p)
		if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
			b[len(b)-5] ^= 1
			os.WriteFile(p, b, 0o644)
		}
	}
	if _, err := Convert(context.Background(), s, Source{Dir: good, Tag: "x"}, "bad:1", ConvertOptions{}); err == nil {
		t.Fatal("tampered layer converted")
	}
	if _, err := Convert(context.Background(), s, Source{Dir: good, Tag: "nope"}, "bad:1", ConvertOptions{}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing tag: %v", err)
	}
	if _, err := Convert(context.Background(), s, Source{Dir: t.TempDir()}, "bad:1", ConvertOptions{}); err == nil || !strings.Contains(err.Error(), "oci-layout") {
		t.Fatalf("not a layout: %v", err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("failed conversions tagged %v", list)
	}
}

// TestReadModel reads an image once into the image model and checks it
// against what skopeo reads from the same layout, and that the model
// cannot be changed through what its accessors return.
func TestReadModel(t *testing.T) {
	need(t, "mksquashfs", "skopeo")
	s := newStore(t)
	res, err := Create(context.Background(), s, "demo:1", []string{tree(t, map[string]string{"f": "x"}), tree(t, map[string]string{"g": "y"})}, CreateOptions{SourceDateEpoch: &epoch})
	must(t, err)
	img, err := Read(s, "demo:1")
	must(t, err)
	out, err := exec.Command("skopeo", "inspect", "--raw", "oci:"+s.LayoutDir()+":demo:1").Output()
	must(t, err)
	var sk ocispec.Manifest
	must(t, json.Unmarshal(out, &sk))
	if img.Digest() != res.Descriptor.Digest || img.Digest() != digest.FromBytes(out) {
		t.Fatalf("digest %s, created %s, skopeo %s", img.Digest(), res.Descriptor.Digest, digest.FromBytes(out))
	}
	ls := img.Layers()
	if len(ls) != 2 || len(sk.Layers) != 2 {
		t.Fatalf("%d layers, skopeo sees %d", len(ls), len(sk.Layers))
	}
	size := int64(len(out)) + sk.Config.Size
	for i, l := range ls {
		want := sk.Layers[i]
		rh, _ := layer.RootHash(want)
		if l.Digest != want.Digest || l.Size != want.Size || l.MediaType != want.MediaType || l.RootHash != rh || len(rh) != 64 {
			t.Errorf("layer %d: %+v, skopeo %+v", i+1, l, want)
		}
		size += want.Size
	}
	if img.Size() != size {
		t.Errorf("size %d, want %d", img.Size(), size)
	}
	// Copies: changing them leaves the model alone.
	m := img.Manifest()
	m.Layers[0].Annotations[layer.AnnotationVerityRoot] = "00"
	ls[0].Digest = "sha256:0"
	if l := img.Layers()[0]; l.Digest == "sha256:0" || l.Descriptor().Annotations[layer.AnnotationVerityRoot] == "00" {
		t.Error("the model changed through a copy")
	}
	// `vessel inspect --json` keeps its fields.
	b, err := json.Marshal(img)
	must(t, err)
	var j map[string]json.RawMessage
	must(t, json.Unmarshal(b, &j))
	for _, k := range []string{"ref", "digest", "size", "manifest", "config", "layers"} {
		if _, ok := j[k]; !ok {
			t.Errorf("JSON has no %q: %s", k, b)
		}
	}
	if !strings.Contains(string(j["layers"]), `"verityRootHash":"`+ls[1].RootHash+`"`) {
		t.Errorf("JSON layers lack the root hash: %s", j["layers"])
	}
}

// storeVariant stores a copy of image ref with its manifest changed by
// edit, tagged as newRef.
func storeVariant(t *testing.T, s *store.Store, ref, newRef string, edit func(*ocispec.Manifest)) {
	t.Helper()
	img, err := Read(s, ref)
	must(t, err)
	m := img.Manifest()
	edit(&m)
	b, err := json.Marshal(m)
	must(t, err)
	d, err := s.PutBlob(bytes.NewReader(b), ocispec.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))})
	must(t, err)
	d.MediaType = ocispec.MediaTypeImageManifest
	must(t, s.Tag(newRef, d))
}

// TestVerifyRefusesWhatRunRefuses: image verify fails an image with no
// layers, a layer descriptor of size 0 or of the wrong size, and the same
// layer twice, naming the layer, as every mount does (CheckLayers).
func TestVerifyRefusesWhatRunRefuses(t *testing.T) {
	need(t, "mksquashfs")
	s := newStore(t)
	_, err := Create(context.Background(), s, "good:1", []string{tree(t, map[string]string{"a": "1"}), tree(t, map[string]string{"b": "2"})}, CreateOptions{SourceDateEpoch: &epoch})
	must(t, err)
	if _, err := Verify(s, "good:1", nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ref   string
		edit  func(*ocispec.Manifest)
		layer int
		want  string
	}{
		{"none:1", func(m *ocispec.Manifest) { m.Layers = []ocispec.Descriptor{} }, 0, "image has no layers"},
		{"size0:1", func(m *ocispec.Manifest) { m.Layers[1].Size = 0 }, 2, "descriptor size is 0"},
		{"sizebig:1", func(m *ocispec.Manifest) { m.Layers[0].Size++ }, 1, "size is"},
		{"sizesmall:1", func(m *ocispec.Manifest) { m.Layers[1].Size-- }, 2, "size is"},
		{"twice:1", func(m *ocispec.Manifest) { m.Layers = append(m.Layers, m.Layers[0]) }, 3, "the same layer as layer 1"},
		{"badroot:1", func(m *ocispec.Manifest) { m.Layers[0].Annotations[layer.AnnotationVerityRoot] = "abcd" }, 1, "not 64 hex digits"},
		{"sha512:1", func(m *ocispec.Manifest) {
			m.Layers[1].Digest = digest.SHA512.FromString("x")
		}, 2, "not a sha256 digest"},
	} {
		storeVariant(t, s, "good:1", c.ref, c.edit)
		_, err := Verify(s, c.ref, nil)
		var ve *VerifyError
		if !errors.As(err, &ve) || ve.Layer != c.layer || !strings.Contains(err.Error(), c.want) {
			t.Errorf("verify %s: %v, want a *VerifyError on layer %d saying %q", c.ref, err, c.layer, c.want)
		}
	}
}
