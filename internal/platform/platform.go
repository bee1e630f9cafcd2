// Package platform names the machine an image is for: OCI platforms
// (os, architecture, variant) parsed from what users type ("arm64",
// "aarch64", "linux/arm/v7"), normalized as containerd does (arm64 is
// arm64/v8, arm defaults to v7), matched against image configs and image
// index entries, and picked from an index.
//
// Callers: package build writes these fields on configs and indexes,
// package store resolves a tag that names an index to one platform's
// image, and package binfmt maps an architecture to its qemu emulator.
package platform

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNoMatch means an index has no image for the platform asked for.
var ErrNoMatch = errors.New("no image for this platform")

// ErrUnknown means an architecture name vessel does not know.
var ErrUnknown = errors.New("unknown architecture")

// archNames maps the spellings vessel accepts to GOARCH names (what OCI
// platforms use).
var archNames = map[string]string{
	"amd64": "amd64", "x86_64": "amd64", "x86-64": "amd64",
	"arm64": "arm64", "aarch64": "arm64",
	"arm": "arm", "armhf": "arm", "armel": "arm",
	"386": "386", "i386": "386", "i686": "386",
	"ppc64le": "ppc64le", "ppc64el": "ppc64le",
	"s390x": "s390x", "riscv64": "riscv64",
	"mips64le": "mips64le", "mips64el": "mips64le",
	"loong64": "loong64", "loongarch64": "loong64",
}

// machines is uname -m (and the qemu-user emulator's suffix) for each
// GOARCH.
var machines = map[string]string{
	"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386",
	"ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
	"mips64le": "mips64el", "loong64": "loongarch64",
}

// Arch returns the GOARCH name of an architecture spelled as Go, OCI,
// Debian or uname -m spell it ("aarch64" -> "arm64").
func Arch(name string) (string, error) {
	if a, ok := archNames[strings.ToLower(strings.TrimSpace(name))]; ok {
		return a, nil
	}
	return "", fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(Known(), ", "))
}

// Known lists the GOARCH names vessel knows, sorted.
func Known() []string {
	var out []string
	for _, v := range archNames {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// Machine is what uname -m prints for arch (a GOARCH name): "aarch64" for
// arm64. It is also the suffix of Debian's qemu-user-static emulators.
func Machine(arch string) string {
	if m, ok := machines[arch]; ok {
		return m
	}
	return arch
}

// Host is the platform of this machine (of the running vessel binary).
func Host() ocispec.Platform {
	return Normalize(ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
}

// Normalize fills the defaults: os linux, GOARCH spelling, variant v8 for
// arm64 and v7 for arm (as containerd and Docker Hub write them).
func Normalize(p ocispec.Platform) ocispec.Platform {
	if p.OS == "" {
		p.OS = "linux"
	}
	if a, ok := archNames[strings.ToLower(p.Architecture)]; ok {
		p.Architecture = a
	}
	if p.Variant == "" {
		switch p.Architecture {
		case "arm64":
			p.Variant = "v8"
		case "arm":
			p.Variant = "v7"
		}
	}
	return p
}

// Parse reads ARCH, OS/ARCH or OS/ARCH/VARIANT ("arm64", "linux/arm/v6").
func Parse(s string) (ocispec.Platform, error) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	var p ocispec.Platform
	switch len(parts) {
	case 1:
		p.Architecture = parts[0]
	case 2:
		p.OS, p.Architecture = parts[0], parts[1]
	case 3:
		p.OS, p.Architecture, p.Variant = parts[0], parts[1], parts[2]
	default:
		return p, fmt.Errorf("platform %q: want ARCH, OS/ARCH or OS/ARCH/VARIANT", s)
	}
	if p.OS != "" && p.OS != "linux" {
		return p, fmt.Errorf("platform %q: vessel handles linux images only", s)
	}
	a, err := Arch(p.Architecture)
	if err != nil {
		return p, fmt.Errorf("platform %q: %w", s, err)
	}
	p.Architecture = a
	return Normalize(p), nil
}

// ParseList reads a comma-separated list of platforms ("amd64,arm64"),
// refusing duplicates.
func ParseList(s string) ([]ocispec.Platform, error) {
	var out []ocispec.Platform
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		p, err := Parse(f)
		if err != nil {
			return nil, err
		}
		for _, q := range out {
			if Match(q, p) {
				return nil, fmt.Errorf("platform %s is listed twice in %q", String(p), s)
			}
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no platform in %q", s)
	}
	return out, nil
}

// String is OS/ARCH[/VARIANT].
func String(p ocispec.Platform) string {
	p = Normalize(p)
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// Match reports whether an image for have runs where want is asked for:
// same os and architecture (after Normalize), and the same variant.
func Match(want, have ocispec.Platform) bool {
	w, h := Normalize(want), Normalize(have)
	return w.OS == h.OS && w.Architecture == h.Architecture && w.Variant == h.Variant
}

// OfConfig is the platform an image config declares.
func OfConfig(c ocispec.Image) ocispec.Platform {
	return Normalize(ocispec.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant})
}

// Pick returns the entry of idx for want. Entries without a platform and
// attestation manifests (Docker's "unknown/unknown") are skipped. The error
// wraps ErrNoMatch and lists the platforms the index has.
func Pick(idx ocispec.Index, want ocispec.Platform) (ocispec.Descriptor, error) {
	var have []string
	for _, m := range idx.Manifests {
		if m.Platform == nil || m.Platform.OS == "unknown" {
			continue
		}
		if Match(want, *m.Platform) {
			return m, nil
		}
		have = append(have, String(*m.Platform))
	}
	if len(have) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%w: want %s, the index names no platforms", ErrNoMatch, String(want))
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: want %s, the index has %s", ErrNoMatch, String(want), strings.Join(have, ", "))
}
