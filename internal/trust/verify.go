package trust

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/manifest"
)

// Options say what Verify trusts and expects.
type Options struct {
	// CAs are the manifest-signing CA certificates to trust (usually one).
	// System roots are never used. Required.
	CAs []*x509.Certificate
	// CRL, when set, must be signed by the CA that anchors the chain; no
	// certificate in the chain may be on it, and it must be current at At.
	CRL *x509.RevocationList
	// ProductID, when set, must equal the certificate's and the manifest's
	// product.
	ProductID string
	// At is the verification time; time.Now when zero.
	At time.Time
	// MinVersion rejects manifests with a lower version (used when Versions
	// is nil, or in addition to it).
	MinVersion int64
	// Versions, when set, holds the highest version accepted per product:
	// lower versions (and the same version with different bytes) are
	// rejected. With Record, a successful Verify records this manifest.
	Versions *Versions
	Record   bool
	// Images, when set, are checked with manifest.CheckImages: every
	// referenced image must be in the store with the exact digest and
	// verity-protected layers.
	Images manifest.Images
}

// Verify checks a signed manifest file and returns the VerifiedManifest only
// if every check passes, in this order (the error, a *VerifyError, names
// the first that fails):
//
//  1. "signed manifest": strict parse (size, duplicate/unknown keys, trailing data)
//  2. "ca": the given CAs are CA certificates
//  3. "certificate profile": leaf is CA:FALSE, digitalSignature, codeSigning, one product ID
//  4. "certificate chain": chains to a given CA only, valid at At, path length respected
//  5. "revocation": no certificate in the chain is on the CRL (when given)
//  6. "signature": the signature matches the exact payload bytes
//  7. "manifest": the payload is a valid manifest (strict parse)
//  8. "product": certificate product ID == manifest product == opts.ProductID
//  9. "images": referenced images present and verity-protected (when opts.Images)
//  10. "version": not lower than MinVersion or the highest accepted version
func Verify(signed []byte, opts Options) (*VerifiedManifest, error) {
	at := opts.At
	if at.IsZero() {
		at = time.Now()
	}
	s, err := ParseSigned(signed)
	if err != nil {
		return nil, verr("signed manifest", ErrMalformed, err)
	}
	leaf := s.Certificates[0]
	leafName := leaf.Subject.CommonName

	if len(opts.CAs) == 0 {
		return nil, verr("ca", ErrUntrusted, ErrNoCA)
	}
	roots := x509.NewCertPool()
	for _, ca := range opts.CAs {
		if !ca.BasicConstraintsValid || !ca.IsCA {
			return nil, verr("ca", ErrUntrusted, fmt.Errorf("%q is not a CA certificate (CA:FALSE): pass the manifest-signing CA, not a product certificate", ca.Subject.CommonName))
		}
		roots.AddCert(ca)
	}

	pid, err := checkLeafProfile(leaf)
	if err != nil {
		return nil, verr("certificate profile", ErrUntrusted, err)
	}

	inter := x509.NewCertPool()
	for _, c := range s.Certificates[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	})
	if err != nil {
		return nil, chainError(err, leafName)
	}
	chain := chains[0]
	anchor := chain[len(chain)-1]

	if opts.CRL != nil {
		if err := checkRevocation(chain, anchor, opts.CRL, at); err != nil {
			return nil, err
		}
	}

	if err := checkSignature(leaf, s.Payload, s.Signature); err != nil {
		return nil, verr("signature", ErrBadSignature, fmt.Errorf("%w (signed by %q)", err, leafName))
	}

	m, err := manifest.Parse(s.Payload)
	if err != nil {
		return nil, verr("manifest", ErrMalformed, err)
	}

	if m.Product != pid {
		return nil, verr("product", ErrProductMismatch, fmt.Errorf("manifest is for product %s but certificate %q is for product %s", m.Product, leafName, pid))
	}
	if opts.ProductID != "" {
		want, err := ParseUUID(opts.ProductID)
		if err != nil {
			return nil, verr("product", ErrProductMismatch, fmt.Errorf("expected product ID: %w", err))
		}
		if want != pid {
			return nil, verr("product", ErrProductMismatch, fmt.Errorf("manifest and certificate %q are for product %s, expected %s", leafName, pid, want))
		}
	}

	if opts.Images != nil {
		if err := manifest.CheckImages(m, opts.Images); err != nil {
			return nil, verr("images", ErrImageMismatch, err)
		}
	}

	if m.Version < opts.MinVersion {
		return nil, verr("version", ErrRollback, fmt.Errorf("manifest version %d is lower than the minimum %d", m.Version, opts.MinVersion))
	}
	vm := &VerifiedManifest{
		m:      *m,
		raw:    bytes.Clone(s.Payload),
		digest: digest.NewDigestFromBytes(digest.SHA256, sha256Sum(s.Payload)),
		signer: leaf,
		chain:  chain,
		images: opts.Images != nil,
	}
	if opts.Versions != nil {
		if err := opts.Versions.check(vm, opts.Record); err != nil {
			return nil, verr("version", ErrRollback, err)
		}
	}
	return vm, nil
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// checkLeafProfile checks the signer certificate's profile and returns its
// product ID.
func checkLeafProfile(c *x509.Certificate) (string, error) {
	name := c.Subject.CommonName
	if c.IsCA {
		return "", fmt.Errorf("certificate %q is a CA (CA:TRUE); manifests must be signed by a product certificate", name)
	}
	if c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return "", fmt.Errorf("certificate %q lacks KeyUsage digitalSignature", name)
	}
	if c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return "", fmt.Errorf("certificate %q has KeyUsage keyCertSign or cRLSign; a product certificate must not", name)
	}
	hasCodeSigning := false
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageCodeSigning {
			hasCodeSigning = true
		}
	}
	if !hasCodeSigning {
		return "", fmt.Errorf("certificate %q lacks ExtKeyUsage codeSigning", name)
	}
	pid, err := ProductID(c)
	if err != nil {
		return "", err
	}
	return pid, nil
}

func chainError(err error, leafName string) error {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return verr("certificate chain", ErrUntrusted, &msgError{
			msg: fmt.Sprintf("x509: certificate signed by unknown authority (product cert %q is not signed by the given CA)", leafName), err: err})
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		return verr("certificate chain", ErrUntrusted, fmt.Errorf("%w (certificate %q)", err, ci.Cert.Subject.CommonName), ErrExpired)
	case errors.As(err, &ci):
		return verr("certificate chain", ErrUntrusted, fmt.Errorf("%w (certificate %q)", err, ci.Cert.Subject.CommonName))
	}
	return verr("certificate chain", ErrUntrusted, err)
}

func checkRevocation(chain []*x509.Certificate, anchor *x509.Certificate, crl *x509.RevocationList, at time.Time) error {
	if err := crl.CheckSignatureFrom(anchor); err != nil {
		return verr("revocation", ErrUntrusted, fmt.Errorf("CRL is not signed by the CA %q: %w", anchor.Subject.CommonName, err))
	}
	if !crl.NextUpdate.IsZero() && at.After(crl.NextUpdate) {
		return verr("revocation", ErrUntrusted, fmt.Errorf("CRL expired at %s (issue a fresh one with 'vessel keys crl')", crl.NextUpdate.UTC().Format(time.RFC3339)), ErrExpired)
	}
	if at.Before(crl.ThisUpdate) {
		return verr("revocation", ErrUntrusted, fmt.Errorf("CRL is not valid before %s", crl.ThisUpdate.UTC().Format(time.RFC3339)), ErrExpired)
	}
	for _, c := range chain[:len(chain)-1] {
		if !bytes.Equal(c.RawIssuer, anchor.RawSubject) {
			continue // issued by an intermediate: this CRL does not cover it
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 && !e.RevocationTime.After(at) {
				return verr("revocation", ErrRevoked, fmt.Errorf("certificate %q (serial %s) was revoked at %s", c.Subject.CommonName, FormatSerial(c.SerialNumber), e.RevocationTime.UTC().Format(time.RFC3339)))
			}
		}
	}
	return nil
}
