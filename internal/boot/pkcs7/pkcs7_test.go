package pkcs7

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/foxboron/go-uefi/pkcs7"
)

func selfSigned(t *testing.T, key crypto.Signer, signer any) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "t"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestSignAuthenticodeParsesAndVerifies(t *testing.T) {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	cert := selfSigned(t, k, k)
	content := []byte{0x30, 0x03, 0x02, 0x01, 0x01} // any DER body
	a, err := SignAuthenticode(k, cert, content)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := SignAuthenticode(k, cert, content)
	if !bytes.Equal(a, b) {
		t.Fatal("signing is not deterministic")
	}
	p, err := pkcs7.ParsePKCS7(a)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := p.Verify(cert); !ok || err != nil {
		t.Fatalf("go-uefi does not verify the signature: %v", err)
	}
	sd, err := UnwrapContentInfo(a)
	if err != nil || !bytes.Equal(WrapSignedData(sd), a) {
		t.Fatalf("unwrap/wrap round trip: %v", err)
	}
}

func TestSignRefusesBadKeys(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecCert := selfSigned(t, ec, ec)
	if _, err := SignDetached(ec, ecCert, []byte("m")); !errors.Is(err, ErrNotRSA) {
		t.Fatalf("ECDSA key: %v", err)
	}
	k1, _ := rsa.GenerateKey(rand.Reader, 2048)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	if _, err := SignAuthenticode(k2, selfSigned(t, k1, k1), []byte{0x05, 0x00}); err == nil {
		t.Fatal("key of another certificate accepted")
	}
}
