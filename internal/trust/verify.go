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
		if err := issuerProfile(ca); err != nil {
			return nil, verr("ca", ErrUntrusted, err)
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
		return nil, chainError(err, leaf, s.Certificates[1:], opts.CAs)
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

func chainError(err error, leaf *x509.Certificate, inter, cas []*x509.Certificate) error {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return verr("certificate chain", ErrUntrusted, &msgError{msg: "x509: " + brokenLink(leaf, inter, cas), err: err})
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		return verr("certificate chain", ErrUntrusted, fmt.Errorf("%w (certificate %q)", err, ci.Cert.Subject.CommonName), ErrExpired)
	case errors.As(err, &ci):
		return verr("certificate chain", ErrUntrusted, fmt.Errorf("%w (certificate %q)", err, ci.Cert.Subject.CommonName))
	}
	return verr("certificate chain", ErrUntrusted, err)
}

// brokenLink says why no chain leads from leaf to one of cas: it follows
// the issuers that really signed each certificate (among the intermediates
// in the file and the CAs) and names the first one whose profile forbids
// it to issue certificates, or else the certificate that no given CA or
// intermediate signed. x509.Verify reports all of these as "unknown
// authority", which blames the wrong certificate.
func brokenLink(leaf *x509.Certificate, inter, cas []*x509.Certificate) string {
	c := leaf
	seen := map[*x509.Certificate]bool{}
	for {
		var issuer *x509.Certificate
		for _, cand := range append(append([]*x509.Certificate{}, cas...), inter...) {
			if !seen[cand] && bytes.Equal(cand.RawSubject, c.RawIssuer) &&
				cand.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil {
				issuer = cand
				break
			}
		}
		if issuer == nil {
			what := "product cert"
			if c != leaf {
				what = "intermediate"
			}
			return fmt.Sprintf("certificate signed by unknown authority (%s %q is not signed by the given CA)", what, c.Subject.CommonName)
		}
		if err := issuerProfile(issuer); err != nil {
			return fmt.Sprintf("%v, but it issued %q", err, c.Subject.CommonName)
		}
		for _, ca := range cas {
			if issuer == ca {
				return fmt.Sprintf("certificate signed by unknown authority (no valid chain from %q to the given CA)", leaf.Subject.CommonName)
			}
		}
		seen[issuer] = true
		c = issuer
	}
}

// issuerProfile checks that c may issue certificates: CA:TRUE in a valid
// basic constraints extension and, when it has a key usage extension,
// keyCertSign (RFC 5280 4.2.1.3 and 4.2.1.9).
func issuerProfile(c *x509.Certificate) error {
	name := c.Subject.CommonName
	if !c.BasicConstraintsValid {
		return fmt.Errorf("certificate %q is not a CA (it has no basic constraints)", name)
	}
	if !c.IsCA {
		return fmt.Errorf("certificate %q is not a CA (CA:FALSE)", name)
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("CA certificate %q lacks KeyUsage keyCertSign", name)
	}
	return nil
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
