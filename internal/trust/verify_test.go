package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/manifest"
)

// mustFail checks that Verify fails the named check with the sentinel.
func mustFail(t *testing.T, signed []byte, opts Options, check string, kind error) *VerifyError {
	t.Helper()
	vm, err := Verify(signed, opts)
	if err == nil {
		t.Fatalf("Verify accepted (product %s): want %q failure", vm.ProductID(), check)
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is not a *VerifyError", err)
	}
	if ve.Check != check || !errors.Is(err, kind) {
		t.Fatalf("failed check %q (%v), want %q matching %v", ve.Check, err, check, kind)
	}
	return ve
}

func TestVerifyAccepts(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 3)
	opts := p.opts()
	opts.ProductID = strings.ToUpper(p.pid)
	opts.Images = imagesFor(2)
	vm, err := Verify(signed, opts)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ProductID() != p.pid || vm.Version() != 3 || len(vm.Images()) != 3 || !vm.ImagesChecked() {
		t.Fatalf("unexpected result %+v", vm.Summary())
	}
	s, _ := ParseSigned(signed)
	if !bytes.Equal(vm.Bytes(), s.Payload) || vm.Manifest().Services[1].Name != "svc-1" {
		t.Fatal("verified manifest does not carry the signed bytes")
	}
}

func TestZeroVerifiedManifestPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("zero VerifiedManifest did not panic")
		}
	}()
	var vm VerifiedManifest
	_ = vm.ProductID()
}

func TestThreatFlippedByteInManifest(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	s, _ := ParseSigned(signed)
	for i := range s.Payload {
		bad := bytes.Clone(s.Payload)
		bad[i] ^= 0x01
		b := reenvelope(t, signed, func(e *envelope) { e.Payload = base64.StdEncoding.EncodeToString(bad) })
		mustFail(t, b, p.opts(), "signature", ErrBadSignature)
	}
}

func TestThreatFlippedByteInSignature(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	s, _ := ParseSigned(signed)
	for i := range s.Signature {
		bad := bytes.Clone(s.Signature)
		bad[i] ^= 0x01
		b := reenvelope(t, signed, func(e *envelope) { e.Signature = base64.StdEncoding.EncodeToString(bad) })
		mustFail(t, b, p.opts(), "signature", ErrBadSignature)
	}
}

func TestThreatFlippedByteInCertificate(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	for i := range p.leaf.Raw {
		bad := bytes.Clone(p.leaf.Raw)
		bad[i] ^= 0x01
		b := reenvelope(t, signed, func(e *envelope) { e.Certificates = []string{base64.StdEncoding.EncodeToString(bad)} })
		if _, err := Verify(b, p.opts()); err == nil {
			t.Fatalf("flipped byte %d of the certificate accepted", i)
		}
	}
}

func TestThreatFlippedByteInFile(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	for i := range signed {
		bad := bytes.Clone(signed)
		bad[i] ^= 0x01
		if _, err := Verify(bad, p.opts()); err == nil {
			t.Fatalf("flipped byte %d (%q) of the signed file accepted", i, signed[i])
		}
	}
}

func TestThreatCertFromAnotherCA(t *testing.T) {
	p := newPKI(t, "Acme")
	evil := newPKI(t, "Evil")
	// Same product ID, same names, different CA.
	leaf, key := issue(t, evil.ca, evil.caKey, productTmpl("acme", p.pid))
	b := signRaw(t, manifestBytes(t, p.pid, 1, 1), key, leaf)
	ve := mustFail(t, b, p.opts(), "certificate chain", ErrUntrusted)
	if !strings.Contains(ve.Error(), `product cert "acme" is not signed by the given CA`) {
		t.Fatalf("message does not explain: %v", ve)
	}
	// The evil CA passed along as an intermediate does not help.
	b = signRaw(t, manifestBytes(t, p.pid, 1, 1), key, leaf, evil.ca)
	mustFail(t, b, p.opts(), "certificate chain", ErrUntrusted)
}

func TestThreatOtherProductSigns(t *testing.T) {
	p := newPKI(t, "Acme")
	other, err := Product(p.dir, ProductOptions{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := LoadCerts(other.Cert)
	key, _ := LoadKey(other.Key)
	payload := manifestBytes(t, p.pid, 1, 1)
	if _, err := Sign(payload, key, certs); !errors.Is(err, ErrProductMismatch) {
		t.Fatalf("Sign with another product's key: %v, want ErrProductMismatch", err)
	}
	mustFail(t, signRaw(t, payload, key, certs[0]), p.opts(), "product", ErrProductMismatch)
	// The other product's own manifest is fine, but not for this product.
	own := signRaw(t, manifestBytes(t, other.ProductID, 1, 1), key, certs[0])
	opts := p.opts()
	opts.ProductID = p.pid
	mustFail(t, own, opts, "product", ErrProductMismatch)
}

func TestThreatExpiredCert(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	opts := p.opts()
	opts.At = p.leaf.NotAfter.Add(time.Second)
	mustFail(t, signed, opts, "certificate chain", ErrExpired)
}

func TestThreatNotYetValidCert(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	opts := p.opts()
	opts.At = p.leaf.NotBefore.Add(-time.Second)
	mustFail(t, signed, opts, "certificate chain", ErrExpired)
}

func TestThreatRevokedCert(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	crlPEM, err := CRL(p.dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	opts := p.opts()
	if opts.CRL, err = ParseCRL(crlPEM); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(signed, opts); err != nil {
		t.Fatalf("empty CRL: %v", err)
	}
	if err := Revoke(p.dir, p.leaf.SerialNumber); err != nil {
		t.Fatal(err)
	}
	if crlPEM, err = CRL(p.dir, 0); err != nil {
		t.Fatal(err)
	}
	opts.CRL, _ = ParseCRL(crlPEM)
	mustFail(t, signed, opts, "revocation", ErrRevoked)

	// A CRL signed by another CA is not accepted (it could omit the entry).
	evil := newPKI(t, "Evil")
	evilCRL, _ := CRL(evil.dir, 0)
	opts.CRL, _ = ParseCRL(evilCRL)
	mustFail(t, signed, opts, "revocation", ErrUntrusted)
	// An expired CRL is not accepted either.
	opts.CRL, _ = ParseCRL(crlPEM)
	opts.At = opts.CRL.NextUpdate.Add(time.Hour)
	if opts.At.Before(p.leaf.NotAfter) {
		mustFail(t, signed, opts, "revocation", ErrExpired)
	}
}

func TestThreatRollback(t *testing.T) {
	p := newPKI(t, "Acme")
	v5, v4 := p.sign(t, 5), p.sign(t, 4)
	opts := p.opts()
	opts.MinVersion = 5
	if _, err := Verify(v5, opts); err != nil {
		t.Fatal(err)
	}
	mustFail(t, v4, opts, "version", ErrRollback)

	opts = p.opts()
	opts.Versions, opts.Record = OpenVersions(t.TempDir()), true
	if _, err := Verify(v5, opts); err != nil {
		t.Fatal(err)
	}
	mustFail(t, v4, opts, "version", ErrRollback)
}

func TestThreatReplayAfterNewerAccepted(t *testing.T) {
	p := newPKI(t, "Acme")
	v1, v2 := p.sign(t, 1), p.sign(t, 2)
	root := t.TempDir()
	opts := p.opts()
	opts.Versions, opts.Record = OpenVersions(root), true
	for _, b := range [][]byte{v1, v2, v2} { // the accepted manifest again is fine
		if _, err := Verify(b, opts); err != nil {
			t.Fatal(err)
		}
	}
	mustFail(t, v1, opts, "version", ErrRollback)
	// Same version, different content.
	other := signRaw(t, manifestBytes(t, p.pid, 2, 3), p.key, p.leaf)
	mustFail(t, other, opts, "version", ErrRollback)
	// The record survives (a new process) and is what the file says.
	r, ok, err := OpenVersions(root).Get(p.pid)
	if err != nil || !ok || r.Version != 2 {
		t.Fatalf("record %+v %v %v", r, ok, err)
	}
	// A damaged record fails closed.
	if err := os.WriteFile(OpenVersions(root).Path(), []byte(`{"products":{}}{`), 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, v2, opts, "version", ErrRollback)
}

func TestThreatCACertAsLeaf(t *testing.T) {
	p := newPKI(t, "Acme")
	// A CA certificate that otherwise looks like a product certificate.
	tmpl := productTmpl("acme", p.pid)
	tmpl.IsCA, tmpl.KeyUsage = true, x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign
	leaf, key := issue(t, p.ca, p.caKey, tmpl)
	b := signRaw(t, manifestBytes(t, p.pid, 1, 1), key, leaf)
	mustFail(t, b, p.opts(), "certificate profile", ErrUntrusted)
	// The manifest CA itself signing.
	b = signRaw(t, manifestBytes(t, p.pid, 1, 1), p.caKey, p.ca)
	mustFail(t, b, p.opts(), "certificate profile", ErrUntrusted)
}

func TestThreatLeafAsCA(t *testing.T) {
	p := newPKI(t, "Acme")
	// The product certificate issues a "product" certificate of its own.
	leaf, key := issue(t, p.leaf, p.key, productTmpl("acme", p.pid))
	b := signRaw(t, manifestBytes(t, p.pid, 1, 1), key, leaf, p.leaf)
	mustFail(t, b, p.opts(), "certificate chain", ErrUntrusted)
	// The product certificate given as the trust anchor.
	opts := p.opts()
	opts.CAs = []*x509.Certificate{p.leaf}
	mustFail(t, p.sign(t, 1), opts, "ca", ErrUntrusted)
}

func TestThreatChainTooLong(t *testing.T) {
	p := newPKI(t, "Acme")
	// The manifest CA has path length 0: no intermediate is allowed.
	inter, interKey := issue(t, p.ca, p.caKey, caTmpl("intermediate", 0))
	leaf, key := issue(t, inter, interKey, productTmpl("acme", p.pid))
	b := signRaw(t, manifestBytes(t, p.pid, 1, 1), key, leaf, inter)
	ve := mustFail(t, b, p.opts(), "certificate chain", ErrUntrusted)
	var ci x509.CertificateInvalidError
	if !errors.As(ve, &ci) || ci.Reason != x509.TooManyIntermediates {
		t.Fatalf("want TooManyIntermediates, got %v", ve)
	}
	// More certificates than the file format allows.
	certs := []*x509.Certificate{p.leaf, inter, inter, inter, inter}
	mustFail(t, signRaw(t, manifestBytes(t, p.pid, 1, 1), p.key, certs...), p.opts(), "signed manifest", ErrMalformed)
}

func TestChainWithAllowedIntermediate(t *testing.T) {
	root, rootKey := issue(t, nil, nil, caTmpl("root", 1))
	inter, interKey := issue(t, root, rootKey, caTmpl("intermediate", 0))
	pid, _ := NewUUID()
	leaf, key := issue(t, inter, interKey, productTmpl("acme", pid))
	b, err := Sign(manifestBytes(t, pid, 1, 1), key, []*x509.Certificate{leaf, inter})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(b, Options{CAs: []*x509.Certificate{root}}); err != nil {
		t.Fatal(err)
	}
}

func TestThreatTruncatedInput(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	for n := 0; n < len(signed)-1; n++ { // the last byte is a newline
		if _, err := Verify(signed[:n], p.opts()); err == nil {
			t.Fatalf("truncated to %d of %d bytes: accepted", n, len(signed))
		}
	}
	s, _ := ParseSigned(signed)
	for _, n := range []int{0, 1, len(s.Payload) / 2, len(s.Payload) - 2} {
		b := reenvelope(t, signed, func(e *envelope) { e.Payload = base64.StdEncoding.EncodeToString(s.Payload[:n]) })
		if _, err := Verify(b, p.opts()); err == nil {
			t.Fatalf("payload truncated to %d: accepted", n)
		}
	}
}

func TestThreatHugeInput(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	// Padding with whitespace keeps it valid JSON but oversize.
	huge := append(bytes.Clone(signed), bytes.Repeat([]byte(" "), MaxSignedSize)...)
	mustFail(t, huge, p.opts(), "signed manifest", ErrMalformed)
	// A signed payload larger than a manifest may be.
	big := append([]byte(`{"pad":"`), bytes.Repeat([]byte("a"), manifest.MaxSize)...)
	big = append(big, `"}`...)
	mustFail(t, signRaw(t, big, p.key, p.leaf), p.opts(), "signed manifest", ErrMalformed)
	// Deep nesting.
	deep := []byte(strings.Repeat("[", 100000) + strings.Repeat("]", 100000))
	mustFail(t, deep, p.opts(), "signed manifest", ErrMalformed)
}

func TestThreatStrictParsing(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	s, _ := ParseSigned(signed)
	payload := string(s.Payload)
	envCases := map[string][]byte{
		"duplicate key":    bytes.Replace(signed, []byte(`"signature"`), []byte(`"signature": "AAAA", "signature"`), 1),
		"unknown key":      bytes.Replace(signed, []byte(`"signature"`), []byte(`"comment": "x", "signature"`), 1),
		"case variant":     bytes.Replace(signed, []byte(`"signature"`), []byte(`"Signature"`), 1),
		"trailing data":    append(bytes.Clone(signed), "{}"...),
		"trailing garbage": append(bytes.Clone(signed), "x"...),
		"wrong mediaType":  bytes.Replace(signed, []byte(SignedMediaType), []byte("application/json"), 1),
		"invalid utf-8":    bytes.Replace(signed, []byte(`"mediaType"`), []byte("\"media\xffType\""), 1),
	}
	for name, b := range envCases {
		t.Run("envelope/"+name, func(t *testing.T) { mustFail(t, b, p.opts(), "signed manifest", ErrMalformed) })
	}
	// Manifests signed with the real key but not strictly valid.
	manCases := map[string]string{
		"duplicate key":  strings.Replace(payload, `"version": 1`, `"version": 9, "version": 1`, 1),
		"case variant":   strings.Replace(payload, `"version": 1`, `"version": 1, "Version": 9`, 1),
		"unknown key":    strings.Replace(payload, `"version": 1`, `"version": 1, "debug": true`, 1),
		"trailing data":  payload + `{"version": 99}`,
		"float version":  strings.Replace(payload, `"version": 1`, `"version": 1.5`, 1),
		"nested unknown": strings.Replace(payload, `"name": "svc-0"`, `"name": "svc-0", "privileged": true`, 1),
		"nested dup":     strings.Replace(payload, `"name": "svc-0"`, `"name": "svc-0", "name": "svc-9"`, 1),
		"duplicate svc":  strings.Replace(payload, `"name": "svc-1"`, `"name": "svc-0"`, 1),
	}
	for name, m := range manCases {
		if m == payload {
			t.Fatalf("case %s did not change the manifest", name)
		}
		t.Run("manifest/"+name, func(t *testing.T) {
			mustFail(t, signRaw(t, []byte(m), p.key, p.leaf), p.opts(), "manifest", ErrMalformed)
		})
	}
}

func TestThreatImageSwapped(t *testing.T) {
	p := newPKI(t, "Acme")
	signed := p.sign(t, 1)
	images := imagesFor(3) // holds img2 as well, which the manifest does not use
	s, _ := ParseSigned(signed)
	swapped := bytes.Replace(s.Payload, []byte(fakeDigest("img0").Encoded()), []byte(fakeDigest("img2").Encoded()), 1)
	if bytes.Equal(swapped, s.Payload) {
		t.Fatal("digest not found in the manifest")
	}
	b := reenvelope(t, signed, func(e *envelope) { e.Payload = base64.StdEncoding.EncodeToString(swapped) })
	opts := p.opts()
	opts.Images = images
	mustFail(t, b, opts, "signature", ErrBadSignature)

	// The store lost an image, a layer, or a layer lost its verity root hash.
	delete(images.manifests, fakeDigest("img1"))
	mustFail(t, signed, opts, "images", ErrImageMismatch)
	opts.Images = imagesFor(2)
	im := opts.Images.(*memImages)
	for d := range im.blobs {
		delete(im.blobs, d)
		break
	}
	mustFail(t, signed, opts, "images", ErrImageMismatch)
	im = imagesFor(2)
	om := im.manifests[fakeDigest("img0")]
	om.Layers[0].Annotations = nil
	im.manifests[fakeDigest("img0")] = om
	opts.Images = im
	mustFail(t, signed, opts, "images", ErrImageMismatch)
}

func TestRSAProductKey(t *testing.T) {
	p := newPKI(t, "Acme")
	for _, bits := range []int{2048, 3072} {
		key, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		serial, _ := newSerial()
		tmpl := productTmpl("acme-rsa", p.pid)
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		b, err := Sign(manifestBytes(t, p.pid, 1, 1), key, []*x509.Certificate{leaf})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(b, p.opts()); err != nil {
			t.Fatalf("RSA-%d: %v", bits, err)
		}
	}
}

func TestKeyDirectory(t *testing.T) {
	p := newPKI(t, "Acme")
	for _, f := range []string{ManifestCAKey, IdentityCAKey, filepath.Join(ProductsDir, "acme", ProductKey)} {
		st, err := os.Stat(filepath.Join(p.dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, st.Mode(), err)
		}
		b, _ := os.ReadFile(filepath.Join(p.dir, f))
		if !bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----")) {
			t.Fatalf("%s is not PKCS#8 PEM", f)
		}
	}
	if _, err := Init(p.dir, InitOptions{Org: "Acme"}); !errors.Is(err, ErrExists) {
		t.Fatalf("Init over existing keys: %v, want ErrExists", err)
	}
	if _, err := Product(p.dir, ProductOptions{Name: "acme"}); !errors.Is(err, ErrExists) {
		t.Fatalf("Product over existing key: %v, want ErrExists", err)
	}
	if _, err := Product(p.dir, ProductOptions{Name: "acme", Force: true, ProductID: p.pid}); err != nil {
		t.Fatal(err)
	}
	if !p.ca.IsCA || p.ca.MaxPathLen != 0 || !p.ca.MaxPathLenZero || p.leaf.IsCA {
		t.Fatal("certificate profile wrong")
	}
	if id, _ := ProductID(p.leaf); id != p.pid {
		t.Fatalf("product ID %s, want %s", id, p.pid)
	}
}

func TestOpenSSLVerifiesProductCert(t *testing.T) {
	openssl := needOpenSSL(t)
	p := newPKI(t, "Acme")
	out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(p.dir, ManifestCACert),
		filepath.Join(p.dir, ProductsDir, "acme", ProductCert)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	out, err = exec.Command(openssl, "x509", "-noout", "-text", "-in", filepath.Join(p.dir, ProductsDir, "acme", ProductCert)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "URI:urn:uuid:"+p.pid) || !strings.Contains(string(out), "Code Signing") {
		t.Fatalf("openssl x509 -text does not show the product ID and codeSigning: %v\n%s", err, out)
	}
}

func TestOpenSSLChecksSignature(t *testing.T) {
	openssl := needOpenSSL(t)
	p := newPKI(t, "Acme")
	s, err := ParseSigned(p.sign(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	man, sig, cert := write("manifest.json", s.Payload), write("sig.bin", s.Signature), write("product.pem", PEMCerts(s.Certificates[0]))
	pub, err := exec.Command(openssl, "x509", "-in", cert, "-pubkey", "-noout").Output()
	if err != nil {
		t.Fatal(err)
	}
	pubf := write("product.pub", pub)
	out, err := exec.Command(openssl, "dgst", "-sha256", "-verify", pubf, "-signature", sig, man).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Verified OK") {
		t.Fatalf("openssl dgst: %v\n%s", err, out)
	}
	s.Payload[10] ^= 1
	write("manifest.json", s.Payload)
	if out, err := exec.Command(openssl, "dgst", "-sha256", "-verify", pubf, "-signature", sig, man).CombinedOutput(); err == nil {
		t.Fatalf("openssl accepted a changed manifest:\n%s", out)
	}
}

func TestOpenSSLChecksCRL(t *testing.T) {
	openssl := needOpenSSL(t)
	p := newPKI(t, "Acme")
	if err := Revoke(p.dir, p.leaf.SerialNumber); err != nil {
		t.Fatal(err)
	}
	crl, err := CRL(p.dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(p.dir, "crl.pem")
	if err := os.WriteFile(f, crl, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "verify", "-crl_check", "-CRLfile", f, "-CAfile", filepath.Join(p.dir, ManifestCACert),
		filepath.Join(p.dir, ProductsDir, "acme", ProductCert)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "certificate revoked") {
		t.Fatalf("openssl does not see the revocation: %v\n%s", err, out)
	}
}

func TestIssueMachineCert(t *testing.T) {
	p := newPKI(t, "Acme")
	ca, caKey, err := LoadCA(filepath.Join(p.dir, IdentityCACert), filepath.Join(p.dir, IdentityCAKey))
	if err != nil {
		t.Fatal(err)
	}
	mkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "whatever"}}, mkey)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	c, err := IssueMachineCert(ca, caKey, csr, p.pid, "m-0001", 0)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatal(err)
	}
	if id, _ := ProductID(c); id != p.pid {
		t.Fatalf("product ID %q", id)
	}
	if id, _ := MachineID(c); id != "m-0001" {
		t.Fatalf("machine ID %q", id)
	}
	if !c.PublicKey.(*ecdsa.PublicKey).Equal(mkey.Public()) || c.IsCA {
		t.Fatal("wrong key or profile")
	}
	// A CSR whose signature does not match is refused.
	csr.Signature = bytes.Clone(csr.Signature)
	csr.Signature[len(csr.Signature)-3] ^= 1
	if _, err := IssueMachineCert(ca, caKey, csr, p.pid, "m-0001", 0); err == nil {
		t.Fatal("tampered CSR accepted")
	}
	// A product certificate is not a CA.
	if _, err := IssueMachineCert(p.leaf, p.key, csr, p.pid, "m", 0); err == nil {
		t.Fatal("leaf accepted as CA")
	}
}

func TestParseSerial(t *testing.T) {
	for s, want := range map[string]int64{"10": 10, "0x10": 16, "0XfF": 255} {
		n, err := ParseSerial(s)
		if err != nil || n.Cmp(big.NewInt(want)) != 0 {
			t.Fatalf("%s: %v %v", s, n, err)
		}
	}
	for _, s := range []string{"", "0", "-1", "0x", "12a"} {
		if _, err := ParseSerial(s); err == nil {
			t.Fatalf("%q accepted", s)
		}
	}
}

func needOpenSSL(t *testing.T) string {
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed (apt-get install openssl): the independent check cannot run")
	}
	return p
}

// A chain that breaks at an intermediate with the wrong profile names that
// intermediate and what is wrong with it, not "not signed by the given CA"
// (the leaf is signed by the intermediate, and the intermediate by the CA).
func TestChainErrorNamesIssuerProfile(t *testing.T) {
	root, rootKey := issue(t, nil, nil, caTmpl("root", 2))
	pid, _ := NewUUID()
	cases := map[string]struct {
		inter *x509.Certificate
		want  string
	}{
		"CA:FALSE": {&x509.Certificate{Subject: pkix.Name{CommonName: "not-a-ca"}, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, `"not-a-ca" is not a CA (CA:FALSE)`},
		"no basic constraints": {&x509.Certificate{Subject: pkix.Name{CommonName: "no-bc"},
			KeyUsage: x509.KeyUsageCertSign}, `"no-bc" is not a CA`},
		"no keyCertSign": {&x509.Certificate{Subject: pkix.Name{CommonName: "no-certsign"}, BasicConstraintsValid: true, IsCA: true,
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign}, `"no-certsign" lacks KeyUsage keyCertSign`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			inter, interKey := issue(t, root, rootKey, tc.inter)
			leaf, key := issue(t, inter, interKey, productTmpl("acme", pid))
			b := signRaw(t, manifestBytes(t, pid, 1, 1), key, leaf, inter)
			ve := mustFail(t, b, Options{CAs: []*x509.Certificate{root}}, "certificate chain", ErrUntrusted)
			if msg := ve.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "not signed by the given CA") {
				t.Fatalf("error %q does not name the cause %q", msg, tc.want)
			}
		})
	}
	// the same intermediate, given as a trust anchor, is refused as a CA too
	bad, badKey := issue(t, nil, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "anchor-no-certsign"}, BasicConstraintsValid: true, IsCA: true,
		KeyUsage: x509.KeyUsageDigitalSignature})
	leaf, key := issue(t, bad, badKey, productTmpl("acme", pid))
	ve := mustFail(t, signRaw(t, manifestBytes(t, pid, 1, 1), key, leaf), Options{CAs: []*x509.Certificate{bad}}, "ca", ErrUntrusted)
	if !strings.Contains(ve.Error(), "keyCertSign") {
		t.Fatalf("error %q does not name keyCertSign", ve)
	}
	// a leaf really signed by someone else still says so, naming the leaf
	other, otherKey := issue(t, nil, nil, caTmpl("other", 0))
	leaf, key = issue(t, other, otherKey, productTmpl("stranger", pid))
	ve = mustFail(t, signRaw(t, manifestBytes(t, pid, 1, 1), key, leaf), Options{CAs: []*x509.Certificate{root}}, "certificate chain", ErrUntrusted)
	if !strings.Contains(ve.Error(), `"stranger" is not signed by the given CA`) {
		t.Fatalf("error %q", ve)
	}
}

// Certificate and key files are size-limited while they are read:
// /dev/zero is refused after MaxPEMFileSize bytes, not read forever.
func TestLoadRefusesEndlessInput(t *testing.T) {
	if _, err := LoadCerts("/dev/zero"); err == nil || !strings.Contains(err.Error(), "/dev/zero is larger than 1048576 bytes") {
		t.Fatalf("LoadCerts(/dev/zero): %v", err)
	}
	if _, err := LoadKey("/dev/zero"); err == nil || !strings.Contains(err.Error(), "/dev/zero is larger than 1048576 bytes") {
		t.Fatalf("LoadKey(/dev/zero): %v", err)
	}
}
