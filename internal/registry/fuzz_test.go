package registry

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WWW-Authenticate headers come from the network.
func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer realm="https://auth.example.com/token",service="registry",scope="repository:a/b:pull"`)
	f.Add(`Basic realm="x"`)
	f.Add(`Bearer realm="unterminated`)
	f.Fuzz(func(t *testing.T, h string) {
		c, ok := parseChallenge(h)
		if ok && c.scheme != "basic" && c.scheme != "bearer" {
			t.Fatalf("scheme %q accepted", c.scheme)
		}
	})
}

func FuzzParseReference(f *testing.F) {
	f.Add("docker://127.0.0.1:5000/acme/app:1")
	f.Add("docker://reg.example.com/a/b@sha256:" + strings.Repeat("a", 64))
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			return
		}
		again, err := ParseReference(r.String())
		if err != nil || again != r {
			t.Fatalf("%q -> %q -> %+v, %v", s, r.String(), again, err)
		}
	})
}

// fakeSource serves one manifest body for every child.
type fakeSource struct{ b []byte }

func (f fakeSource) root(context.Context) (ocispec.Descriptor, []byte, error) {
	return ocispec.Descriptor{}, f.b, nil
}
func (f fakeSource) manifest(context.Context, ocispec.Descriptor) ([]byte, error) { return f.b, nil }
func (f fakeSource) open(context.Context, ocispec.Descriptor, int64) (io.ReadCloser, error) {
	return nil, io.EOF
}

// Manifests and indexes from a registry are parsed by walk.
func FuzzWalk(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"sha256:` + strings.Repeat("b", 64) + `","size":2}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		nodes, blobs, err := walk(context.Background(), fakeSource{b}, node{desc: ocispec.Descriptor{Digest: digest.FromBytes(b)}, b: b}, DefaultMaxBlobSize)
		if err != nil {
			return
		}
		for _, bl := range blobs {
			if bl.Digest.Validate() != nil || bl.Size < 0 {
				t.Fatalf("bad blob descriptor accepted: %+v", bl)
			}
		}
		_ = nodes
	})
}
