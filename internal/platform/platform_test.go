package platform

import (
	"errors"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"arm64": "linux/arm64/v8", "aarch64": "linux/arm64/v8", "linux/arm64": "linux/arm64/v8",
		"x86_64": "linux/amd64", "amd64": "linux/amd64", "linux/arm/v6": "linux/arm/v6", "armhf": "linux/arm/v7",
		"riscv64": "linux/riscv64",
	} {
		p, err := Parse(in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
		}
		if got := String(p); got != want {
			t.Errorf("Parse(%q) = %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{"", "sparc", "windows/amd64", "linux/arm64/v8/x"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
	if _, err := Parse("m68k"); !errors.Is(err, ErrUnknown) {
		t.Errorf("Parse(m68k) = %v, want ErrUnknown", err)
	}
}

func TestParseList(t *testing.T) {
	ps, err := ParseList("amd64, arm64")
	if err != nil || len(ps) != 2 || ps[1].Architecture != "arm64" {
		t.Fatalf("ParseList = %v, %v", ps, err)
	}
	if _, err := ParseList("arm64,aarch64"); err == nil {
		t.Error("duplicate platform accepted")
	}
	if _, err := ParseList(" , "); err == nil {
		t.Error("empty list accepted")
	}
}

func TestMatchAndPick(t *testing.T) {
	if !Match(ocispec.Platform{Architecture: "arm64"}, ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}) {
		t.Error("arm64 does not match linux/arm64/v8")
	}
	if Match(ocispec.Platform{Architecture: "arm", Variant: "v6"}, ocispec.Platform{Architecture: "arm"}) {
		t.Error("arm/v6 matches arm (v7)")
	}
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{
		{Digest: "sha256:aa", Platform: &ocispec.Platform{OS: "unknown", Architecture: "unknown"}},
		{Digest: "sha256:bb", Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{Digest: "sha256:cc", Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		{Digest: "sha256:dd"},
	}}
	d, err := Pick(idx, ocispec.Platform{Architecture: "arm64"})
	if err != nil || d.Digest != "sha256:cc" {
		t.Fatalf("Pick arm64 = %v, %v", d.Digest, err)
	}
	_, err = Pick(idx, ocispec.Platform{Architecture: "s390x"})
	if !errors.Is(err, ErrNoMatch) || err.Error() != "no image for this platform: want linux/s390x, the index has linux/amd64, linux/arm64/v8" {
		t.Fatalf("Pick s390x = %v", err)
	}
}

func TestMachine(t *testing.T) {
	if Machine("arm64") != "aarch64" || Machine("amd64") != "x86_64" {
		t.Fatal("Machine names")
	}
}
