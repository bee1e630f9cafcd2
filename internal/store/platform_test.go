package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/platform"
)

// putImage stores an image whose config declares arch (and variant).
func putImage(t *testing.T, s *Store, arch, variant string) ocispec.Descriptor {
	t.Helper()
	cfg, err := s.PutBlob(strings.NewReader(fmt.Sprintf(`{"architecture":%q,"variant":%q,"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`, arch, variant)), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig})
	if err != nil {
		t.Fatal(err)
	}
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[]}`,
		ocispec.MediaTypeImageManifest, cfg.MediaType, cfg.Digest, cfg.Size)
	d, err := s.PutBlob(strings.NewReader(m), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestResolveImagePlatforms(t *testing.T) {
	s := open(t)
	amd := putImage(t, s, "amd64", "")
	arm := putImage(t, s, "arm64", "v8")
	idx := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}`,
		ocispec.MediaTypeImageIndex, amd.MediaType, amd.Digest, amd.Size, arm.MediaType, arm.Digest, arm.Size)
	id, err := s.PutBlob(strings.NewReader(idx), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag("multi:1", id); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag("armonly:1", arm); err != nil {
		t.Fatal(err)
	}
	// The same index, entries swapped, stored untagged: a digest reference
	// to it is resolved as an index too.
	untagged := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}`,
		ocispec.MediaTypeImageIndex, arm.MediaType, arm.Digest, arm.Size, amd.MediaType, amd.Digest, amd.Size)
	ud, err := s.PutBlob(strings.NewReader(untagged), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"multi:1", id.Digest.String(), ud.Digest.String()} {
		d, err := s.ResolveImage(ref, ocispec.Platform{Architecture: "arm64"})
		if err != nil || d.Digest != arm.Digest {
			t.Fatalf("ResolveImage(%s, arm64) = %s, %v; want %s", ref, d.Digest, err, arm.Digest)
		}
	}
	if d, err := s.ResolveImage("multi:1", ocispec.Platform{}); err != nil || (platform.Host().Architecture == "amd64" && d.Digest != amd.Digest) {
		t.Fatalf("ResolveImage(multi, host) = %s, %v", d.Digest, err)
	}
	if _, err := s.ResolveImage("multi:1", ocispec.Platform{Architecture: "s390x"}); !errors.Is(err, platform.ErrNoMatch) {
		t.Fatalf("s390x: %v", err)
	}
	ps, err := s.Platforms("multi:1")
	if err != nil || len(ps) != 2 {
		t.Fatalf("Platforms = %v, %v", ps, err)
	}
	if ps, err := s.Platforms("armonly:1"); err != nil || ps != nil {
		t.Fatalf("Platforms of an image = %v, %v", ps, err)
	}
	// A system manifest's view: one platform, foreign images refused.
	pi := PlatformImages{Store: s, Platform: ocispec.Platform{Architecture: "amd64"}}
	if d, err := pi.Resolve("multi:1"); err != nil || d.Digest != amd.Digest {
		t.Fatalf("PlatformImages(amd64).Resolve(multi) = %s, %v", d.Digest, err)
	}
	if _, err := pi.Resolve("armonly:1"); !errors.Is(err, ErrWrongPlatform) || !strings.Contains(err.Error(), "is for linux/arm64/v8, not linux/amd64") {
		t.Fatalf("PlatformImages(amd64).Resolve(armonly) = %v", err)
	}
	if err := s.CheckPlatform(arm, ocispec.Platform{Architecture: "aarch64"}); err != nil {
		t.Fatalf("CheckPlatform(arm64 image, aarch64) = %v", err)
	}
}
