package store

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Short digests name the one manifest whose digest starts with them, as
// podman accepts short image IDs; names win; ambiguity is refused.
func TestResolveShortDigest(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var descs []ocispec.Descriptor
	for i := 0; ; i++ {
		d, err := s.PutBlob(strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest})
		if err != nil {
			t.Fatal(err)
		}
		// Two manifests whose digests share their first hex digit, for the
		// ambiguity check.
		if len(descs) == 0 || d.Digest.Encoded()[0] == descs[0].Digest.Encoded()[0] && d.Digest != descs[0].Digest {
			descs = append(descs, d)
		}
		if len(descs) == 2 {
			break
		}
	}
	a, b := descs[0], descs[1]
	for ref, d := range map[string]ocispec.Descriptor{"a:1": a, "a:2": a, "b:1": b} {
		if err := s.Tag(ref, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, ref := range []string{a.Digest.Encoded()[:12], "sha256:" + a.Digest.Encoded()[:8], a.Digest.Encoded()[:63]} {
		got, err := s.Resolve(ref)
		if err != nil || got.Digest != a.Digest {
			t.Errorf("Resolve(%q) = %v, %v; want %s", ref, got.Digest, err, a.Digest)
		}
	}
	// A third manifest whose digest shares a's first 8 digits (its blob
	// file is planted: Tag only needs it to exist) makes 8 digits ambiguous
	// and 9 or more not.
	twin := digest.Digest("sha256:" + a.Digest.Encoded()[:8] + strings.Repeat("0", 56))
	if twin == a.Digest {
		twin = digest.Digest("sha256:" + a.Digest.Encoded()[:8] + strings.Repeat("1", 56))
	}
	p, _ := s.BlobPath(twin)
	if err := os.WriteFile(p, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag("twin:1", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: twin, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve(a.Digest.Encoded()[:8]); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("shared prefix: %v, want ErrAmbiguous", err)
	}
	if a.Digest.Encoded()[8] != twin.Encoded()[8] {
		if got, err := s.Resolve(a.Digest.Encoded()[:9]); err != nil || got.Digest != a.Digest {
			t.Errorf("9 digits: %v, %v", got.Digest, err)
		}
	}
	if _, err := s.Resolve("ffffffffffff"); !errors.Is(err, ErrNotFound) && !strings.HasPrefix(a.Digest.Encoded(), "ffff") {
		t.Errorf("unknown short digest: %v, want ErrNotFound", err)
	}
	// A name spelled like a prefix wins.
	if err := s.Tag(b.Digest.Encoded()[:6]+":latest", a); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Resolve(b.Digest.Encoded()[:6]); err != nil || got.Digest != a.Digest {
		t.Errorf("a tag spelled like b's prefix: %v, %v; want the tag's image %s", got.Digest, err, a.Digest)
	}
}
