// Package trusttest makes manifest-signing keys for tests with package
// trust (a manifest CA and product keys in a temp dir) and signs manifests
// with them. Only tests import it.
package trusttest

import (
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/trust"
)

// PKI is a keys directory as vessel keys init and vessel keys product
// leave it.
type PKI struct {
	Dir string              // the keys directory
	CAs []*x509.Certificate // the manifest CA certificate
}

// New makes a manifest CA for org and a product key and certificate for
// each of products (name -> product ID) in a temp dir of t.
func New(t testing.TB, org string, products map[string]string) *PKI {
	t.Helper()
	dir := t.TempDir()
	if _, err := trust.Init(dir, trust.InitOptions{Org: org}); err != nil {
		t.Fatal(err)
	}
	for name, id := range products {
		if _, err := trust.Product(dir, trust.ProductOptions{Name: name, ProductID: id}); err != nil {
			t.Fatal(err)
		}
	}
	cas, err := trust.LoadCerts(filepath.Join(dir, trust.ManifestCACert))
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{Dir: dir, CAs: cas}
}

// Sign marshals m and signs it with the key and certificate of product
// (a name given to New).
func (p *PKI) Sign(t testing.TB, product string, m *manifest.Manifest) []byte {
	t.Helper()
	payload, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, err := trust.LoadKey(filepath.Join(p.Dir, trust.ProductsDir, product, trust.ProductKey))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := trust.LoadCerts(filepath.Join(p.Dir, trust.ProductsDir, product, trust.ProductCert))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := trust.Sign(payload, key, certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	return signed
}
