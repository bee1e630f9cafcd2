package recipe

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

var baseDigest = digest.FromString("base manifest")

// keyFixture writes a recipe dir with a file import and a dir import.
func keyFixture(t *testing.T) (dir string, parse func(extra string) *Image) {
	dir = t.TempDir()
	write := func(p, s string, mode os.FileMode) {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/tool", "#!/bin/sh\necho tool\n", 0o755)
	write("tree/a.txt", "a", 0o644)
	write("tree/sub/b.txt", "b", 0o600)
	if err := os.Symlink("a.txt", filepath.Join(dir, "tree", "link")); err != nil {
		t.Fatal(err)
	}
	return dir, func(extra string) *Image {
		t.Helper()
		text := "img:\n  from: {type: oci, url: 'l:t'}\n  imports:\n    - bin/tool\n    - tree\n  run: make\n  environment: {B: 2, A: 1}\n" + extra
		f, err := Parse(filepath.Join(dir, "vessel.yaml"), []byte(text), Options{Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		return f.Images[0]
	}
}

func keys(t *testing.T, img *Image) Keys {
	t.Helper()
	k, err := Key(img, KeyOptions{BaseDigest: baseDigest, LayerType: "squashfs"})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyStable(t *testing.T) {
	dir, parse := keyFixture(t)
	k1 := keys(t, parse(""))
	// Same inputs, new parse, touched files: same keys.
	old := time.Unix(12345, 0)
	for _, p := range []string{"bin/tool", "tree/a.txt", "tree/sub", "tree"} {
		if err := os.Chtimes(filepath.Join(dir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if k2 := keys(t, parse("")); k2 != k1 {
		t.Fatalf("keys changed with mtimes: %v vs %v", k1, k2)
	}
	// Map order in the file does not matter.
	img := parse("")
	img.Environment = map[string]string{"A": "1", "B": "2"}
	if k := keys(t, img); k != k1 {
		t.Fatal("environment order changed the key")
	}
	// A pinned known answer would break on any serialization change; instead
	// check the key is a well-formed sha256 digest.
	if err := k1.Layer.Validate(); err != nil || k1.Layer == k1.Config {
		t.Fatalf("keys %v", k1)
	}
}

func TestKeyChanges(t *testing.T) {
	dir, parse := keyFixture(t)
	k0 := keys(t, parse(""))
	layerChanges := map[string]func(){
		"import byte": func() { os.WriteFile(filepath.Join(dir, "tree/a.txt"), []byte("A"), 0o644) },
		"import mode": func() { os.Chmod(filepath.Join(dir, "bin/tool"), 0o700) },
		"nested mode": func() { os.Chmod(filepath.Join(dir, "tree/sub"), 0o700) },
		"new file":    func() { os.WriteFile(filepath.Join(dir, "tree/new"), nil, 0o644) },
		"symlink": func() {
			os.Remove(filepath.Join(dir, "tree/link"))
			os.Symlink("sub/b.txt", filepath.Join(dir, "tree/link"))
		},
	}
	for name, change := range layerChanges {
		t.Run(name, func(t *testing.T) {
			dir2, parse2 := keyFixture(t)
			dir = dir2
			base := keys(t, parse2(""))
			if base != k0 {
				t.Fatal("fixtures in different dirs give different keys")
			}
			change()
			k := keys(t, parse2(""))
			if k.Layer == base.Layer || k.Config == base.Config {
				t.Errorf("%s: key unchanged", name)
			}
		})
	}

	_, parse = keyFixture(t)
	for name, mutate := range map[string]func(*Image){
		"env":       func(i *Image) { i.Environment["A"] = "x" },
		"build env": func(i *Image) { i.BuildEnv = map[string]string{"X": "1"} },
		"script":    func(i *Image) { i.Run = []string{"make all"} },
		"arch":      func(i *Image) { i.Arch = "arm64" },
		"dest":      func(i *Image) { i.Imports[0].Dest = "/usr/bin/" },
		"mode":      func(i *Image) { m := os.FileMode(0o500); i.Imports[0].Mode = &m },
		"uid":       func(i *Image) { u := 5; i.Imports[1].UID = &u },
		"legacy":    func(i *Image) { i.LegacyImport = true },
		"name":      func(i *Image) { i.Name = "other" },
	} {
		img := parse("")
		mutate(img)
		if k := keys(t, img); k.Layer == k0.Layer || k.Config == k0.Config {
			t.Errorf("%s: layer key unchanged", name)
		}
	}
	for name, opts := range map[string]KeyOptions{
		"base":  {BaseDigest: digest.FromString("other base"), LayerType: "squashfs"},
		"layer": {BaseDigest: baseDigest, LayerType: "erofs"},
		"epoch": {BaseDigest: baseDigest, LayerType: "squashfs", SourceDateEpoch: "1"},
	} {
		k, err := Key(parse(""), opts)
		if err != nil || k.Layer == k0.Layer {
			t.Errorf("%s: layer key unchanged (%v)", name, err)
		}
	}
	for name, extra := range map[string]string{
		"entrypoint":   "  entrypoint: /x\n",
		"cmd":          "  cmd: []\n",
		"full_command": "  full_command: /x\n",
		"labels":       "  labels: {a: b}\n",
		"annotations":  "  annotations: {a: b}\n",
		"working_dir":  "  working_dir: /w\n",
		"volumes":      "  volumes: [/v]\n",
		"runtime_user": "  runtime_user: nobody\n",
	} {
		k := keys(t, parse(extra))
		if k.Layer != k0.Layer {
			t.Errorf("%s: config-only change changed the layer key", name)
		}
		if k.Config == k0.Config {
			t.Errorf("%s: config key unchanged", name)
		}
	}
	if k := keys(t, parse("  build_only: true\n")); k != k0 {
		t.Error("build_only changed the keys")
	}
}

func TestKeyErrors(t *testing.T) {
	dir, parse := keyFixture(t)
	if _, err := Key(parse(""), KeyOptions{LayerType: "squashfs"}); err == nil {
		t.Error("no base digest accepted")
	}
	os.Remove(filepath.Join(dir, "bin/tool"))
	_, err := Key(parse(""), KeyOptions{BaseDigest: baseDigest, LayerType: "squashfs"})
	if err == nil || !containsAll(err.Error(), "vessel.yaml:4", "bin/tool", "not found") {
		t.Errorf("missing import: %v", err)
	}
	f, err := Parse("v.yaml", []byte("a:\n  from: {type: scratch}\n  imports:\n    - https://example.com/x.tgz\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Key(f.Images[0], KeyOptions{LayerType: "squashfs"})
	if err == nil || !containsAll(err.Error(), "v.yaml:4", "download them first") {
		t.Errorf("remote import without a resolver: %v", err)
	}
	// With a resolver, the downloaded file is keyed by content under the
	// URL's file name.
	dl := filepath.Join(t.TempDir(), "whatever")
	os.WriteFile(dl, []byte("content"), 0o644)
	resolve := func(image, p string) (string, error) {
		if image != "" || p != "https://example.com/x.tgz" {
			t.Errorf("resolve(%q, %q)", image, p)
		}
		return dl, nil
	}
	k1, err := Key(f.Images[0], KeyOptions{LayerType: "squashfs", Resolve: resolve})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(dl, []byte("changed"), 0o644)
	if k2, err := Key(f.Images[0], KeyOptions{LayerType: "squashfs", Resolve: resolve}); err != nil || k2.Layer == k1.Layer {
		t.Errorf("changed download content kept the key (%v)", err)
	}
}
