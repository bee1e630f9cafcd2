package update

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image/imagetest"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/trust/trusttest"
)

const testPID = "0f8fad5b-d9cb-469f-a165-70867728950e"
const otherPID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

// pki is a manifest CA with two products: acme (testPID) and other.
type pki struct{ *trusttest.PKI }

func newPKI(t testing.TB) *pki {
	t.Helper()
	return &pki{trusttest.New(t, "Acme", map[string]string{"acme": testPID, "other": otherPID})}
}

func (p *pki) opts() trust.Options { return trust.Options{CAs: p.CAs, ProductID: testPID} }

// sign signs a manifest of product (acme or other) and version with host
// as hostfs and web as the one service.
func (p *pki) sign(t testing.TB, product string, version int64, host, web ocispec.Descriptor, health ...string) []byte {
	t.Helper()
	pid := map[string]string{"acme": testPID, "other": otherPID}[product]
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pid, ProductName: product, Version: version,
		Hostfs: &manifest.Image{MediaType: host.MediaType, Digest: host.Digest, Size: host.Size},
		Services: []manifest.Service{{Name: "web", Image: manifest.Image{MediaType: web.MediaType, Digest: web.Digest, Size: web.Size},
			Restart: manifest.RestartAlways, Network: manifest.NetworkHost, Health: health}}}
	return p.Sign(t, product, m)
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// fixture is a build store with images and a machine store with version 1
// installed (as vessel install leaves it).
type fixture struct {
	p        *pki
	build    *store.Store
	machine  *store.Store
	host     ocispec.Descriptor
	web      map[int]ocispec.Descriptor
	signed   map[int][]byte
	client   *registry.Client
	fromHere StageOptions
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{p: newPKI(t), build: openStore(t), machine: openStore(t), web: map[int]ocispec.Descriptor{}, signed: map[int][]byte{}}
	f.host = imagetest.Squashfs(t, f.build, "host:1", map[string]string{"sbin/init": "host"})
	for _, v := range []int{1, 2, 3} {
		f.web[v] = imagetest.Squashfs(t, f.build, "web:"+string(rune('0'+v)), map[string]string{"www/index.html": "version " + string(rune('0'+v))})
		f.signed[v] = f.p.sign(t, "acme", int64(v), f.host, f.web[v])
	}
	c, err := registry.New(registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.client = c
	f.fromHere = StageOptions{Trust: f.p.opts(), Client: c, From: func(d digest.Digest) registry.Endpoint { return registry.Store(f.build, d.String()) }}
	// install version 1 on the machine: images copied and tagged, the
	// record written, the version accepted
	var imgs []registry.InstalledImage
	for name, d := range map[string]ocispec.Descriptor{"hostfs": f.host, "web": f.web[1]} {
		if _, err := c.Copy(context.Background(), registry.Store(f.build, d.Digest.String()), registry.Store(f.machine, "system/"+name+":v1")); err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, registry.InstalledImage{Name: name, Digest: d.Digest, Tag: "system/" + name + ":v1"})
	}
	vm, err := trust.Verify(f.signed[1], trust.Options{CAs: f.p.CAs, ProductID: testPID, Images: f.machine, Versions: trust.OpenVersions(f.machine.Root()), Record: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := registry.RecordCurrent(f.machine.Root(), &registry.Current{Product: testPID, Version: 1, Digest: vm.Digest(), Images: imgs}, f.signed[1]); err != nil {
		t.Fatal(err)
	}
	return f
}

func readState(t testing.TB, root string) *State {
	t.Helper()
	s, _, err := Read(root)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testNow = time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
