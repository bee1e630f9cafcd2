package update

import (
	"context"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

const testPID = "0f8fad5b-d9cb-469f-a165-70867728950e"
const otherPID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

// pki is a manifest CA with two products: acme (testPID) and other.
type pki struct {
	dir string
	cas []*x509.Certificate
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	dir := t.TempDir()
	if _, err := trust.Init(dir, trust.InitOptions{Org: "Acme"}); err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"acme": testPID, "other": otherPID} {
		if _, err := trust.Product(dir, trust.ProductOptions{Name: name, ProductID: id}); err != nil {
			t.Fatal(err)
		}
	}
	cas, err := trust.LoadCerts(filepath.Join(dir, trust.ManifestCACert))
	if err != nil {
		t.Fatal(err)
	}
	return &pki{dir: dir, cas: cas}
}

func (p *pki) opts() trust.Options { return trust.Options{CAs: p.cas, ProductID: testPID} }

// sign signs a manifest of product (acme or other) and version with host
// as hostfs and web as the one service.
func (p *pki) sign(t testing.TB, product string, version int64, host, web ocispec.Descriptor, health ...string) []byte {
	t.Helper()
	pid := map[string]string{"acme": testPID, "other": otherPID}[product]
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pid, ProductName: product, Version: version,
		Hostfs: &manifest.Image{MediaType: host.MediaType, Digest: host.Digest, Size: host.Size},
		Services: []manifest.Service{{Name: "web", Image: manifest.Image{MediaType: web.MediaType, Digest: web.Digest, Size: web.Size},
			Restart: manifest.RestartAlways, Network: manifest.NetworkHost, Health: health}}}
	payload, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, err := trust.LoadKey(filepath.Join(p.dir, "products", product, trust.ProductKey))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := trust.LoadCerts(filepath.Join(p.dir, "products", product, trust.ProductCert))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := trust.Sign(payload, key, certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// realImage builds a verity-protected squashfs image from files.
func realImage(t testing.TB, st *store.Store, ref string, files map[string]string) ocispec.Descriptor {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("image create needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs is not installed (make deps)")
	}
	dir := t.TempDir()
	for n, c := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	epoch := int64(1700000000)
	res, err := image.Create(context.Background(), st, ref, []string{dir}, image.CreateOptions{Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch})
	if err != nil {
		t.Fatal(err)
	}
	return res.Descriptor
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
	f.host = realImage(t, f.build, "host:1", map[string]string{"sbin/init": "host"})
	for _, v := range []int{1, 2, 3} {
		f.web[v] = realImage(t, f.build, "web:"+string(rune('0'+v)), map[string]string{"www/index.html": "version " + string(rune('0'+v))})
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
	vm, err := trust.Verify(f.signed[1], trust.Options{CAs: f.p.cas, ProductID: testPID, Images: f.machine, Versions: trust.OpenVersions(f.machine.Root()), Record: true})
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
