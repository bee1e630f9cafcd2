package registry

import (
	"testing"

	"github.com/vesselos/vessel/internal/registry/registrytest"
)

// The round trip through a real registry keeps every digest: push from
// one store, pull into another, and the manifests are the same bytes.
func TestPushPullRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		host func(t testing.TB) string
	}{
		{"distribution", func(t testing.TB) string { return distribution(t, registrytest.Options{}) }},
		{"in-process", func(t testing.TB) string { return inProcess(t, true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := tc.host(t)
			src, dst := openStore(t), openStore(t)
			want := makeImage(t, src, "app:1", 1, 1000, 3<<20, 0, 70<<10)
			c := newClient(t, Options{ChunkSize: 1 << 20}) // the 3 MiB layer goes in chunks
			ref := mustRef(t, "docker://"+host+"/acme/app:1")
			res, err := c.Copy(ctx(t), Store(src, "app:1"), Registry(ref))
			if err != nil {
				t.Fatal(err)
			}
			if res.Descriptor.Digest != want.Digest || res.Blobs != 5 || res.Existing != 0 {
				t.Fatalf("push: %+v", res)
			}
			// again: everything is there already
			res, err = c.Copy(ctx(t), Store(src, "app:1"), Registry(ref))
			if err != nil || res.Existing != 5 || res.Transferred != 0 {
				t.Fatalf("second push: %+v %v", res, err)
			}
			res, err = c.Copy(ctx(t), Registry(ref), Store(dst, "copy:1"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := dst.Resolve("copy:1")
			if err != nil || got.Digest != want.Digest {
				t.Fatalf("pulled %v %v, want %s", got.Digest, err, want.Digest)
			}
			m, err := dst.Manifest(got.Digest)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range m.Layers {
				if err := dst.VerifyBlob(l); err != nil {
					t.Fatal(err)
				}
			}
			// by digest, into an OCI layout
			dir := t.TempDir() + "/layout"
			if _, err := c.Copy(ctx(t), Registry(ref.WithDigest(want.Digest)), Layout(dir, "v1")); err != nil {
				t.Fatal(err)
			}
			l, err := OpenLayoutForTest(dir)
			if err != nil {
				t.Fatal(err)
			}
			d, err := l.ResolveLayoutTag("v1")
			if err != nil || d.Digest != want.Digest {
				t.Fatalf("layout has %v %v", d.Digest, err)
			}
		})
	}
}
