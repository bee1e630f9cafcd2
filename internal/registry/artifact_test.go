package registry

import (
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/registry/registrytest"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/trust/trusttest"
)

const testPID = "0f8fad5b-d9cb-469f-a165-70867728950e"

// pki is a manifest CA for org and one product key (acme, testPID).
type pki struct{ *trusttest.PKI }

func newPKI(t testing.TB, org string) *pki {
	t.Helper()
	return &pki{trusttest.New(t, org, map[string]string{"acme": testPID})}
}

// sign signs a manifest of version that pins images (desc).
func (p *pki) sign(t testing.TB, version int64, images ...ocispec.Descriptor) []byte {
	t.Helper()
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: testPID, ProductName: "acme", Version: version, Services: []manifest.Service{}}
	for i, d := range images {
		m.Services = append(m.Services, manifest.Service{Name: []string{"web", "db", "cache"}[i],
			Image:   manifest.Image{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size},
			Restart: manifest.RestartAlways, Network: manifest.NetworkHost})
	}
	return p.Sign(t, "acme", m)
}

func fakeImage(s string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(s), Size: 500}
}

// A signed manifest pushed as an artifact is found again, with its
// signature, through the referrers API (in-process registry) and through
// the tag fallback (distribution 2.8 has no referrers API); the assembled
// file verifies with trust.Verify.
func TestSignedManifestReferrers(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 3, fakeImage("web"))
	for _, tc := range []struct {
		name         string
		host         func(testing.TB) string
		wantFallback bool
	}{
		{"referrers-api", func(t testing.TB) string { return inProcess(t, true) }, false},
		{"tag-fallback", func(t testing.TB) string { return distribution(t, registrytest.Options{}) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, Options{})
			ref := mustRef(t, "docker://"+tc.host(t)+"/acme/product:3")
			res, err := c.PushSigned(ctx(t), signed, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.FallbackTag != "" && !tc.wantFallback {
				t.Fatalf("the registry serves the referrers API, but the push wrote the fallback tag %s too", res.FallbackTag)
			}
			if tc.wantFallback && res.FallbackTag != FallbackTag(res.Manifest.Digest) {
				t.Fatalf("fallback tag = %q", res.FallbackTag)
			}
			// The registry holds the fallback tag exactly when it was needed:
			// with the referrers API the lookup below cannot have used it.
			_, _, terr := c.getManifest(ctx(t), Reference{Host: ref.Host, Repo: ref.Repo, Tag: FallbackTag(res.Manifest.Digest)})
			if hasTag := terr == nil; hasTag != tc.wantFallback {
				t.Fatalf("fallback tag present = %v (%v), want %v", hasTag, terr, tc.wantFallback)
			}
			refs, err := c.Referrers(ctx(t), ref, res.Manifest.Digest, SignatureArtifactType)
			if err != nil || len(refs) != 1 || refs[0].Digest != res.Signature.Digest {
				t.Fatalf("referrers = %v, %v; want %s", refs, err, res.Signature.Digest)
			}
			f, err := c.FetchSigned(ctx(t), ref)
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Signed) != 1 || f.Artifact.Digest != res.Manifest.Digest {
				t.Fatalf("fetched %+v", f)
			}
			vm, err := trust.Verify(f.Signed[0], trust.Options{CAs: p.CAs, ProductID: testPID})
			if err != nil {
				t.Fatal(err)
			}
			if vm.Version() != 3 || vm.Digest() != digest.FromBytes(f.Payload) {
				t.Fatalf("verified %v", vm.Summary())
			}
			// pushing the same file again changes nothing
			again, err := c.PushSigned(ctx(t), signed, ref, nil)
			if err != nil || again.Manifest.Digest != res.Manifest.Digest || again.Signature.Digest != res.Signature.Digest {
				t.Fatalf("second push: %+v %v", again, err)
			}
			if refs, _ := c.Referrers(ctx(t), ref, res.Manifest.Digest, SignatureArtifactType); len(refs) != 1 {
				t.Fatalf("after a second push: %d referrers", len(refs))
			}
		})
	}
}

// A signature made with another CA's product key is attached but does not
// verify against our CA; an image that is not an artifact is refused.
func TestFetchSignedRefusals(t *testing.T) {
	host := inProcess(t, true)
	c := newClient(t, Options{})
	ours, theirs := newPKI(t, "Acme"), newPKI(t, "Mallory")
	ref := mustRef(t, "docker://"+host+"/acme/product:1")
	if _, err := c.PushSigned(ctx(t), theirs.sign(t, 1, fakeImage("web")), ref, nil); err != nil {
		t.Fatal(err)
	}
	f, err := c.FetchSigned(ctx(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = verifyAny(f, trust.Options{CAs: ours.CAs})
	if !errors.Is(err, ErrNoValidSignature) || !errors.Is(err, trust.ErrUntrusted) {
		t.Fatalf("err = %v, want no valid signature (untrusted)", err)
	}
	st := openStore(t)
	makeImage(t, st, "app:1", 3, 100)
	img := mustRef(t, "docker://"+host+"/acme/app:1")
	if _, err := c.Copy(ctx(t), Store(st, "app:1"), Registry(img)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchSigned(ctx(t), img); err == nil {
		t.Fatal("an ordinary image was accepted as a system manifest")
	}
	if _, err := c.PushSigned(ctx(t), []byte(`{"mediaType":"nope"}`), ref, nil); err == nil {
		t.Fatal("a malformed signed file was pushed")
	}
}
