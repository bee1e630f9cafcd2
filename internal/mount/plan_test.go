package mount

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/verity"
)

// fakeImage makes an image with n squashfs layers; no blobs exist.
func fakeImage(n int) *Image {
	img := &Image{name: "demo:1", img: &image.Image{}}
	for i := 0; i < n; i++ {
		d := digest.FromString(strings.Repeat("x", i+1))
		img.layers = append(img.layers, imageLayer{
			digest: d,
			size:   40960 + 8192,
			blob:   "/store/oci/blobs/sha256/" + d.Encoded(),
			geometry: layer.Geometry{
				Format:   layer.DefaultFormat(layer.Squashfs),
				DataSize: 40960,
				Params:   verity.Params{HashAlg: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: 10, Salt: []byte{0xab, 0xcd}, HashOffset: 40960},
				Root:     make([]byte, 32),
			},
		})
	}
	return img
}

func TestPlanUserspaceWritable(t *testing.T) {
	img := fakeImage(3)
	p, err := NewPlan("/run/vessel", "c1", img, "/run/vessel/containers/c1/rootfs/", ModeUserspace, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.Target != "/run/vessel/containers/c1/rootfs" {
		t.Errorf("target %q not cleaned", p.Target)
	}
	if len(p.Layers) != 3 {
		t.Fatalf("%d layer mounts, want 3", len(p.Layers))
	}
	for i, lm := range p.Layers {
		l := img.layers[i]
		if lm.Dir != "/run/vessel/layers/"+l.hex() {
			t.Errorf("layer %d dir %s", i, lm.Dir)
		}
		if !lm.VerifyInUserspace || lm.Verity != nil {
			t.Errorf("layer %d: userspace mode must verify in userspace and use no dm device", i)
		}
		if lm.Loop.File != l.blob || lm.Loop.SizeLimit != 40960 {
			t.Errorf("layer %d loop %+v: want the blob limited to the filesystem image", i, lm.Loop)
		}
		if lm.Mount.Type != "squashfs" || lm.Mount.Source != LoopDevice || strings.Join(lm.Mount.Options, ",") != "ro,nosuid,nodev" {
			t.Errorf("layer %d mount %+v", i, lm.Mount)
		}
	}
	want := []string{
		"lowerdir=" + p.Layers[2].Dir + ":" + p.Layers[1].Dir + ":" + p.Layers[0].Dir,
		"upperdir=/run/vessel/uppers/c1/upper",
		"workdir=/run/vessel/uppers/c1/work",
		"volatile",
		"nosuid",
		"nodev",
	}
	if got := strings.Join(p.Overlay.Options, " "); got != strings.Join(want, " ") {
		t.Errorf("overlay options\n got %s\nwant %s", got, strings.Join(want, " "))
	}
	if !p.OwnUp || p.Upper != "/run/vessel/uppers/c1" {
		t.Errorf("upper %q own=%v", p.Upper, p.OwnUp)
	}
}

func TestPlanReadOnly(t *testing.T) {
	p, err := NewPlan("/r", "m", fakeImage(2), "/mnt", ModeUserspace, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Upper != "" || p.Overlay.Type != "overlay" || strings.Join(p.Overlay.Options[1:], ",") != "ro,nosuid,nodev" {
		t.Errorf("read-only plan: %+v", p.Overlay)
	}
	// One layer and no upper: overlayfs refuses that, so it is a bind.
	p, err = NewPlan("/r", "m", fakeImage(1), "/mnt", ModeUserspace, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Overlay.Type != "bind" || p.Overlay.Source != p.Layers[0].Dir || strings.Join(p.Overlay.Options, ",") != "bind,ro,nosuid,nodev" {
		t.Errorf("single-layer read-only plan: %+v", p.Overlay)
	}
}

func TestPlanModes(t *testing.T) {
	img := fakeImage(2)
	p, err := NewPlan("/r", "m", img, "/mnt", ModeVerity, Options{Writable: true, Upper: "/var/tmp/up"})
	if err != nil {
		t.Fatal(err)
	}
	for _, lm := range p.Layers {
		if lm.Verity == nil || lm.VerifyInUserspace || lm.Mount.Source != VerityDevice || lm.Loop.SizeLimit != 40960+8192 {
			t.Errorf("dm-verity layer: %+v", lm)
		}
	}
	if p.OwnUp || p.Upper != "/var/tmp/up" || !strings.Contains(strings.Join(p.Overlay.Options, ","), "upperdir=/var/tmp/up/upper") {
		t.Errorf("caller's upper dir not used: %+v", p)
	}
	p, err = NewPlan("/r", "m", img, "/mnt", ModeFuse, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.Layers[0].Mount.Type != "fuse.squashfuse" || p.Layers[0].Mount.Source != img.layers[0].blob || !p.Layers[0].VerifyInUserspace {
		t.Errorf("fuse layer: %+v", p.Layers[0])
	}
	if !strings.Contains(strings.Join(p.Overlay.Options, ","), ",userxattr") {
		t.Errorf("rootless overlay needs userxattr: %v", p.Overlay.Options)
	}
}

func TestPlanBadInput(t *testing.T) {
	for _, tc := range []struct {
		id, target string
		layers     int
		want       string
	}{
		{"", "/mnt", 1, "1 to 128"},
		{"Bad/ID", "/mnt", 1, "may only use"},
		{".hidden", "/mnt", 1, "may only use"},
		{"ok", "relative/dir", 1, "not an absolute path"},
		{"ok", "/mnt", 60, "more than the kernel's"},
	} {
		_, err := NewPlan("/run/vessel", tc.id, fakeImage(tc.layers), tc.target, ModeUserspace, Options{Writable: true})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewPlan(%q, %q, %d layers): error %v, want %q", tc.id, tc.target, tc.layers, err, tc.want)
		}
	}
	for _, upper := range []string{"/tmp/a,b", "rel/upper"} {
		_, err := NewPlan("/run/vessel", "ok", fakeImage(1), "/mnt", ModeUserspace, Options{Writable: true, Upper: upper})
		if err == nil || !strings.Contains(err.Error(), "upper directory") {
			t.Errorf("upper %q: error %v, want it refused", upper, err)
		}
	}
	// 32 layers fit.
	if _, err := NewPlan("/run/vessel", "ok", fakeImage(32), "/mnt", ModeUserspace, Options{Writable: true}); err != nil {
		t.Errorf("32 layers: %v", err)
	}
}

func TestVerityTable(t *testing.T) {
	l := fakeImage(1).layers[0]
	l.geometry.Root[0] = 0x5a
	v := newVerity(l)
	got := v.Table("/dev/loop7")
	want := "0 80 verity 1 /dev/loop7 /dev/loop7 4096 4096 10 11 sha256 5a" + strings.Repeat("0", 62) + " abcd"
	if got != want {
		t.Fatalf("table\n got %s\nwant %s", got, want)
	}
	dev, back, err := ParseTable(got)
	if err != nil || dev != "/dev/loop7" {
		t.Fatalf("ParseTable: %q %v", dev, err)
	}
	back.Name = v.Name
	if back != *v {
		t.Errorf("round trip\n got %+v\nwant %+v", back, *v)
	}
	l.geometry.Params.Salt = nil
	if s := newVerity(l).Table("/dev/loop7"); !strings.HasSuffix(s, " -") {
		t.Errorf("empty salt must be '-': %s", s)
	}
	for _, bad := range []string{
		"0 80 linear /dev/loop7 0",
		"0 81 verity 1 /dev/loop7 /dev/loop7 4096 4096 10 11 sha256 00 abcd",
		"0 80 verity 1 /dev/loop7 /dev/loop8 4096 4096 10 11 sha256 00 abcd",
		"0 80 verity 1 /dev/loop7 /dev/loop7 4096 x 10 11 sha256 00 abcd",
	} {
		if _, _, err := ParseTable(bad); err == nil {
			t.Errorf("ParseTable(%q) accepted", bad)
		}
	}
}

// TestPlanHostRoot: only a system image may be a machine's root, and then
// its overlay allows setuid and devices while its layer mounts stay inert.
func TestPlanHostRoot(t *testing.T) {
	img := fakeImage(2)
	if _, err := NewPlan("/run/vessel", "host", img, "/sysroot", ModeVerity, Options{Writable: true, HostRoot: true}); err == nil || !strings.Contains(err.Error(), "only an image of a verified system manifest") {
		t.Fatalf("a local image as host root: %v, want a refusal", err)
	}
	img.system = true
	p, err := NewPlan("/run/vessel", "host", img, "/sysroot", ModeVerity, Options{Writable: true, HostRoot: true})
	if err != nil {
		t.Fatal(err)
	}
	if o := strings.Join(p.Overlay.Options, ","); strings.Contains(o, "nosuid") || strings.Contains(o, "nodev") {
		t.Errorf("host root overlay options %s keep setuid programs or devices from working", o)
	}
	for i, lm := range p.Layers {
		if o := strings.Join(lm.Mount.Options, ","); o != "ro,nosuid,nodev" {
			t.Errorf("layer %d options %s, want ro,nosuid,nodev", i, o)
		}
	}
	p, err = NewPlan("/run/vessel", "svc", img, "/mnt", ModeVerity, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if o := strings.Join(p.Overlay.Options, ","); !strings.HasSuffix(o, ",nosuid,nodev") {
		t.Errorf("a service overlay lost nosuid,nodev: %s", o)
	}
}
