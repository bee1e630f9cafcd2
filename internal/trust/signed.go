package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/manifest/strictjson"
)

// SignedMediaType identifies a signed system manifest file.
const SignedMediaType = "application/vnd.vessel.signed-manifest.v1+json"

// Limits on a signed file.
const (
	MaxSignedSize   = 4 << 20 // bytes of the whole file
	MaxCertificates = 4       // leaf plus at most 3 intermediates
	maxSignature    = 1024    // bytes (RSA-4096 is 512)
	maxCertSize     = 16 << 10
	// MaxPEMFileSize bounds a certificate, key or CSR file.
	MaxPEMFileSize = 1 << 20
	// MaxCRLSize bounds a CRL file.
	MaxCRLSize = 16 << 20
	// maxStateSize bounds vessel's own JSON state files (versions, revoked).
	maxStateSize = 16 << 20
)

// Signed is a parsed (not yet verified) signed manifest file:
//
//	{"mediaType": "application/vnd.vessel.signed-manifest.v1+json",
//	 "payload": base64(exact manifest bytes),
//	 "signature": base64(ECDSA ASN.1 or RSA PKCS#1 v1.5 signature over SHA-256(payload)),
//	 "certificates": [base64(DER leaf), base64(DER intermediate)...]}
type Signed struct {
	Payload      []byte
	Signature    []byte
	Certificates []*x509.Certificate // leaf first
}

type envelope struct {
	MediaType    string   `json:"mediaType"`
	Payload      string   `json:"payload"`
	Signature    string   `json:"signature"`
	Certificates []string `json:"certificates"`
}

// ParseSigned parses a signed manifest file strictly: size, duplicate and
// unknown keys, trailing data, canonical base64, certificate count. It does
// not verify anything; use Verify.
func ParseSigned(b []byte) (*Signed, error) {
	if len(b) > MaxSignedSize {
		return nil, fmt.Errorf("%d bytes is more than the %d allowed", len(b), MaxSignedSize)
	}
	if len(b) == 0 {
		return nil, errors.New("empty file")
	}
	var e envelope
	if err := strictjson.Unmarshal(b, &e); err != nil {
		if werr := manifest.WrongFile(b, manifest.KindSigned); werr != nil {
			return nil, werr
		}
		return nil, err
	}
	if e.MediaType != SignedMediaType {
		if werr := manifest.WrongFile(b, manifest.KindSigned); werr != nil {
			return nil, werr
		}
		return nil, fmt.Errorf("mediaType %q: want %q", e.MediaType, SignedMediaType)
	}
	s := &Signed{}
	var err error
	if s.Payload, err = b64(e.Payload, "payload", manifest.MaxSize); err != nil {
		return nil, err
	}
	if s.Signature, err = b64(e.Signature, "signature", maxSignature); err != nil {
		return nil, err
	}
	if len(e.Certificates) == 0 || len(e.Certificates) > MaxCertificates {
		return nil, fmt.Errorf("%d certificates: want 1 to %d (leaf first)", len(e.Certificates), MaxCertificates)
	}
	for i, c := range e.Certificates {
		der, err := b64(c, fmt.Sprintf("certificates[%d]", i), maxCertSize)
		if err != nil {
			return nil, err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificates[%d]: %w", i, err)
		}
		s.Certificates = append(s.Certificates, cert)
	}
	return s, nil
}

func b64(s, what string, max int) ([]byte, error) {
	if len(s) == 0 {
		return nil, fmt.Errorf("%s is empty", what)
	}
	if base64.StdEncoding.DecodedLen(len(s)) > max+3 {
		return nil, fmt.Errorf("%s is larger than %d bytes", what, max)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", what, max)
	}
	return b, nil
}

// Marshal encodes s as a signed manifest file.
func (s *Signed) Marshal() ([]byte, error) {
	e := envelope{
		MediaType: SignedMediaType,
		Payload:   base64.StdEncoding.EncodeToString(s.Payload),
		Signature: base64.StdEncoding.EncodeToString(s.Signature),
	}
	for _, c := range s.Certificates {
		e.Certificates = append(e.Certificates, base64.StdEncoding.EncodeToString(c.Raw))
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Sign signs the exact manifest bytes payload with key and returns the
// signed file. certs is the signer's certificate followed by any
// intermediates. Sign refuses a payload that is not a valid manifest, a key
// that does not match the certificate, and a manifest whose product is not
// the certificate's product ID (ErrProductMismatch).
func Sign(payload []byte, key crypto.Signer, certs []*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, errors.New("sign: the signer's certificate is required")
	}
	if len(certs) > MaxCertificates {
		return nil, fmt.Errorf("sign: %d certificates, at most %d allowed", len(certs), MaxCertificates)
	}
	leaf := certs[0]
	if !samePublicKey(leaf.PublicKey, key.Public()) {
		return nil, fmt.Errorf("sign: key does not belong to certificate %q", leaf.Subject.CommonName)
	}
	m, err := manifest.Parse(payload)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	pid, err := ProductID(leaf)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if pid != m.Product {
		return nil, fmt.Errorf("sign: %w: manifest is for product %s, certificate %q is for product %s", ErrProductMismatch, m.Product, leaf.Subject.CommonName, pid)
	}
	sig, err := signDigest(payload, key)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if err := checkSignature(leaf, payload, sig); err != nil {
		return nil, fmt.Errorf("sign: own signature does not verify: %w", err)
	}
	return (&Signed{Payload: payload, Signature: sig, Certificates: certs}).Marshal()
}

func signDigest(payload []byte, key crypto.Signer) ([]byte, error) {
	h := sha256.Sum256(payload)
	if err := checkSigningKey(key.Public()); err != nil {
		return nil, err
	}
	// ECDSA keys produce ASN.1 signatures, RSA keys PKCS#1 v1.5 with
	// crypto.SHA256: both are what 'openssl dgst -sha256 -verify' checks.
	return key.Sign(rand.Reader, h[:], crypto.SHA256)
}

// checkSigningKey checks that a product key is of a kind verifiers accept.
func checkSigningKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not supported (P-256, P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small (2048 or more)", k.N.BitLen())
		}
	default:
		return fmt.Errorf("key type %T not supported (ECDSA or RSA)", k)
	}
	return nil
}

// checkSignature checks sig over payload with the certificate's key
// (ECDSA P-256/P-384 or RSA >= 2048 bits, SHA-256).
func checkSignature(c *x509.Certificate, payload, sig []byte) error {
	h := sha256.Sum256(payload)
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not accepted", k.Curve.Params().Name)
		}
		if !ecdsa.VerifyASN1(k, h[:], sig) {
			return errors.New("ECDSA signature does not match the manifest bytes")
		}
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small", k.N.BitLen())
		}
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, h[:], sig); err != nil {
			return errors.New("RSA signature does not match the manifest bytes")
		}
		return nil
	}
	return fmt.Errorf("public key type %T not accepted", c.PublicKey)
}
