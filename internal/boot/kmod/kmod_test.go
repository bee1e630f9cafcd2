package kmod_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/vesselos/vessel/internal/boot/kmod"
	"github.com/vesselos/vessel/internal/boot/kmod/kmodtest"
)

// fixture writes a modules tree: name -> modinfo strings; names ending in
// .xz or .zst are compressed.
func fixture(t *testing.T, mods map[string][]string, builtin, aliases string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "6.1.0-test")
	for name, info := range mods {
		b := kmodtest.Module(info...)
		file := name
		switch {
		case strings.HasSuffix(name, ".xz"):
			var buf bytes.Buffer
			w, _ := xz.NewWriter(&buf)
			w.Write(b)
			w.Close()
			b, file = buf.Bytes(), strings.TrimSuffix(name, ".xz")+".ko.xz"
		case strings.HasSuffix(name, ".zst"):
			w, _ := zstd.NewWriter(nil)
			b, file = w.EncodeAll(b, nil), strings.TrimSuffix(name, ".zst")+".ko.zst"
		default:
			file = name + ".ko"
		}
		p := filepath.Join(dir, "kernel", "drivers", file)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.alias"), []byte(aliases), 0o644)
	return dir
}

func names(ms []*kmod.Module) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return strings.Join(s, " ")
}

func TestResolveOrdersDependenciesFirst(t *testing.T) {
	dir := fixture(t, map[string][]string{
		"dm-verity":      {"license=GPL", "depends=dm-mod,reed_solomon,dm-bufio"},
		"dm-mod":         {"depends="},
		"dm-bufio":       {"depends=dm-mod"},
		"reed_solomon":   {"depends="},
		"ext4.zst":       {"depends=jbd2,crc16", "softdep=pre: crypto-crc32c"},
		"jbd2.xz":        {"depends="},
		"crc16":          {"depends="},
		"crc32c_intel":   {"depends="},
		"crc32c_generic": {"depends="},
	}, "kernel/drivers/virtio/virtio.ko\n", "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v* virtio_pci\n")
	tree, err := kmod.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Version != "6.1.0-test" {
		t.Fatalf("version %q", tree.Version)
	}
	res, err := tree.Resolve([]string{"dm_verity", "virtio", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := "dm_mod dm_bufio reed_solomon dm_verity crc32c_generic crc16 jbd2 ext4"
	if got := names(res.Modules); got != want {
		t.Fatalf("order\n got %s\nwant %s", got, want)
	}
	if len(res.Builtin) != 1 || res.Builtin[0] != "virtio" {
		t.Fatalf("builtin %v, want [virtio]", res.Builtin)
	}
	// Compressed modules come back uncompressed, at a .ko path.
	for _, m := range res.Modules {
		b, err := m.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		info, err := kmod.ModInfo(b)
		if err != nil || len(info) == 0 {
			t.Fatalf("%s: modinfo %v %v", m.Name, info, err)
		}
		if !strings.HasSuffix(m.LoadPath(), ".ko") || !strings.HasPrefix(m.LoadPath(), "lib/modules/6.1.0-test/kernel/") {
			t.Fatalf("%s: load path %s", m.Name, m.LoadPath())
		}
	}
}

func TestResolveErrors(t *testing.T) {
	dir := fixture(t, map[string][]string{
		"a":    {"depends=b"},
		"b":    {"depends=a"},
		"c":    {"depends=nothere"},
		"soft": {"softdep=pre: missing-alias post: other"},
	}, "", "")
	tree, err := kmod.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := fixture(t, map[string][]string{"x": {"depends=y"}, "y": {"depends=z"}}, "", "")
	tree2, _ := kmod.Open(dir2)
	if _, err := tree2.Resolve([]string{"x"}); !errors.Is(err, kmod.ErrNotFound) || !strings.Contains(err.Error(), "z (needed by y <- x)") {
		t.Fatalf("missing indirect dependency: %v", err)
	}
	if _, err := tree.Resolve([]string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle: a -> b -> a") {
		t.Fatalf("cycle: %v", err)
	}
	_, err = tree.Resolve([]string{"c"})
	if !errors.Is(err, kmod.ErrNotFound) || !strings.Contains(err.Error(), "nothere (needed by c)") {
		t.Fatalf("missing dependency: %v", err)
	}
	if _, err := tree.Resolve([]string{"nosuch"}); !errors.Is(err, kmod.ErrNotFound) {
		t.Fatalf("missing module: %v", err)
	}
	// A soft dependency the kernel does not have is not an error.
	if res, err := tree.Resolve([]string{"soft"}); err != nil || names(res.Modules) != "soft" {
		t.Fatalf("soft: %v %v", res, err)
	}
	if _, err := kmod.Open(t.TempDir()); err == nil {
		t.Fatal("an empty tree was accepted")
	}
	bad := filepath.Join(dir, "kernel", "drivers", "bad.ko")
	os.WriteFile(bad, []byte("not elf"), 0o644)
	tree, _ = kmod.Open(dir)
	if _, err := tree.Resolve([]string{"bad"}); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("bad module: %v", err)
	}
}

// TestDebianKernelAgreesWithDepmod resolves the default boot modules on the
// installed Debian kernel and checks the order against depmod's own
// modules.dep (an independent tool): every dependency depmod lists comes
// first.
func TestDebianKernelAgreesWithDepmod(t *testing.T) {
	dirs, _ := filepath.Glob("/lib/modules/*/modules.dep")
	if len(dirs) == 0 {
		t.Skip("no /lib/modules/*/modules.dep (make deps installs linux-image-amd64)")
	}
	dir := filepath.Dir(dirs[len(dirs)-1])
	tree, err := kmod.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tree.Resolve([]string{"virtio_pci", "virtio_blk", "virtio_net", "dm-verity", "squashfs", "erofs", "overlay", "efivarfs", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	deps := map[string][]string{}
	for _, l := range strings.Split(string(dep), "\n") {
		mod, rest, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		for _, d := range strings.Fields(rest) {
			deps[mod] = append(deps[mod], d)
		}
	}
	pos := map[string]int{}
	for i, m := range res.Modules {
		pos[m.Path] = i
	}
	for i, m := range res.Modules {
		for _, d := range deps[m.Path] {
			j, ok := pos[d]
			if !ok {
				t.Errorf("%s: depmod dependency %s is missing", m.Path, d)
			} else if j > i {
				t.Errorf("%s loads before its dependency %s", m.Path, d)
			}
		}
	}
	order := names(res.Modules)
	for _, want := range []string{"dm_verity", "ext4", "crc32c_generic", "virtio_blk"} {
		if !strings.Contains(" "+order+" ", " "+want+" ") {
			t.Errorf("%s missing from %s", want, order)
		}
	}
	t.Logf("%d modules: %s", len(res.Modules), order)
}
