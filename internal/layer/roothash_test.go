package layer

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParseRootHash(t *testing.T) {
	good := strings.Repeat("0123456789abcdef", 4)
	b, err := ParseRootHash(good)
	if err != nil || len(b) != RootHashSize || b[1] != 0x23 {
		t.Fatalf("ParseRootHash(%q) = %x, %v", good, b, err)
	}
	for _, tc := range []struct{ in, problem string }{
		{"", "is 0 characters"},
		{good[:62], "is 62 characters"},
		{good + good, "is 128 characters"}, // a sha512 root: manifest.Build once accepted it
		{good + "0", "is 65 characters"},
		{strings.ToUpper(good), "upper-case"},
		{good[:63] + "g", `'g' at offset 63`},
		{" " + good[1:], `' ' at offset 0`},
		{strings.Repeat("x", 1000), "..."},
	} {
		_, err := ParseRootHash(tc.in)
		if !errors.Is(err, ErrBadRootHash) || !strings.Contains(err.Error(), tc.problem) {
			t.Errorf("ParseRootHash(%q): %v, want ErrBadRootHash saying %q", tc.in, err, tc.problem)
		}
	}
}

func TestVerityRoot(t *testing.T) {
	good := strings.Repeat("ab", 32)
	d := ocispec.Descriptor{Digest: digest.FromString("layer")}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want error
		says []string
	}{
		{"current", map[string]string{AnnotationVerityRoot: good}, nil, nil},
		{"old stacker name", map[string]string{AnnotationVerityRootOld: good}, nil, nil},
		{"current wins", map[string]string{AnnotationVerityRoot: good, AnnotationVerityRootOld: "junk"}, nil, nil},
		{"none", map[string]string{"other": good}, ErrNoVerity, []string{d.Digest.String()}},
		{"wrong length", map[string]string{AnnotationVerityRoot: good + good}, ErrBadRootHash, []string{d.Digest.String(), AnnotationVerityRoot, "128 characters"}},
		{"upper case", map[string]string{AnnotationVerityRootOld: strings.ToUpper(good)}, ErrBadRootHash, []string{d.Digest.String(), AnnotationVerityRootOld, "upper-case"}},
		{"not hex", map[string]string{AnnotationVerityRoot: strings.Repeat("zz", 32)}, ErrBadRootHash, []string{d.Digest.String(), "not a hex digit"}},
		{"empty current hides old", map[string]string{AnnotationVerityRoot: "", AnnotationVerityRootOld: good}, ErrBadRootHash, []string{"0 characters"}},
	} {
		d.Annotations = tc.ann
		b, err := VerityRoot(d)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: %x, %v, want %v", tc.name, b, err, tc.want)
			continue
		}
		if err == nil && len(b) != RootHashSize {
			t.Errorf("%s: %d bytes", tc.name, len(b))
		}
		for _, s := range tc.says {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %v does not say %q", tc.name, err, s)
			}
		}
	}
}
