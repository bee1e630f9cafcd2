package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTPM stands in for tpm.KeyOpener: it hands out a software key for
// one path and counts opens and closes.
type fakeTPM struct {
	path          string
	key           crypto.Signer
	opens, closes int
}

func (f *fakeTPM) OpenKey(path string) (crypto.Signer, io.Closer, error) {
	if path != f.path {
		return nil, nil, errors.New("this key file was made by another TPM")
	}
	f.opens++
	return f.key, f, nil
}

func (f *fakeTPM) Close() error { f.closes++; return nil }

func TestLoadSigner(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTPM{path: "product.tpmkey", key: k}
	s, closeKey, err := LoadSigner("tpm:product.tpmkey", f)
	if err != nil || s != crypto.Signer(k) {
		t.Fatalf("LoadSigner(tpm:) = %v, %v", s, err)
	}
	if err := closeKey(); err != nil || f.closes != 1 {
		t.Fatalf("close: %v, %d closes", err, f.closes)
	}
	for ref, want := range map[string]string{
		"tpm:":           "names no key file",
		"tpm:other.key":  "open TPM key other.key: this key file was made by another TPM",
		"missing.pem":    "read key",
		"tpm:product.pk": "another TPM",
	} {
		if _, _, err := LoadSigner(ref, f); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadSigner(%q) = %v, want %q", ref, err, want)
		}
	}
	if _, _, err := LoadSigner("tpm:product.tpmkey", nil); err == nil || !strings.Contains(err.Error(), "not supported here") {
		t.Errorf("LoadSigner without an opener = %v", err)
	}
}

// TestTPMKeyProductAndSign certifies an existing (here: fake TPM) key with
// Product and signs with it through SignFile; the result verifies.
func TestTPMKeyProductAndSign(t *testing.T) {
	p := newPKI(t, "Acme")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTPM{path: "p.tpmkey", key: k}
	res, err := Product(p.dir, ProductOptions{Name: "tpmprod", Key: "tpm:p.tpmkey", TPM: f})
	if err != nil {
		t.Fatal(err)
	}
	if res.Key != "tpm:p.tpmkey" {
		t.Errorf("result key %q", res.Key)
	}
	if _, err := os.Stat(filepath.Join(p.dir, ProductsDir, "tpmprod", ProductKey)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("product.key written for a TPM key: %v", err)
	}
	certs, err := LoadCerts(res.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublicKey(certs[0].PublicKey, k.Public()) {
		t.Fatal("certificate is not for the given key")
	}
	if _, err := Product(p.dir, ProductOptions{Name: "tpmprod", Key: "tpm:p.tpmkey", TPM: f}); !errors.Is(err, ErrExists) {
		t.Errorf("second Product without Force: %v", err)
	}
	dir := t.TempDir()
	m := filepath.Join(dir, "m.json")
	if err := os.WriteFile(m, manifestBytes(t, res.ProductID, 1, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m.signed")
	if _, err := SignFile(SignFiles{Manifest: m, Key: "tpm:p.tpmkey", TPM: f, Cert: res.Cert, Output: out}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(b, p.opts()); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if f.opens != f.closes || f.opens != 2 {
		t.Errorf("%d opens, %d closes; want 2 each", f.opens, f.closes)
	}
}

// TestProductFromCSR: CSRFile makes a request signed by the (fake TPM)
// key; Product certifies its key; a request whose signature does not
// verify is refused.
func TestProductFromCSR(t *testing.T) {
	p := newPKI(t, "Acme")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTPM{path: "p.tpmkey", key: k}
	dir := t.TempDir()
	csr := filepath.Join(dir, "p.csr")
	if err := CSRFile("tpm:p.tpmkey", f, "acme-csr", csr); err != nil {
		t.Fatal(err)
	}
	if f.opens != 1 || f.closes != 1 {
		t.Errorf("%d opens, %d closes", f.opens, f.closes)
	}
	res, err := Product(p.dir, ProductOptions{Name: "acme-csr", CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := LoadCerts(res.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublicKey(certs[0].PublicKey, k.Public()) || certs[0].Subject.CommonName != "acme-csr" {
		t.Fatalf("certificate for %v, CN %q", certs[0].PublicKey, certs[0].Subject.CommonName)
	}
	// Flip a bit of the signature (the last bytes of the DER request).
	b, err := readCSR(csr)
	if err != nil {
		t.Fatal(err)
	}
	raw := append([]byte(nil), b.Raw...)
	raw[len(raw)-3] ^= 1
	bad := filepath.Join(dir, "bad.csr")
	if err := os.WriteFile(bad, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Product(p.dir, ProductOptions{Name: "bad", CSR: bad}); err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Errorf("Product with a bad request: %v", err)
	}
	if err := CSRFile("tpm:p.tpmkey", f, "bad name", csr); err == nil || !strings.Contains(err.Error(), "invalid name") {
		t.Errorf("CSRFile with a bad name: %v", err)
	}
}
