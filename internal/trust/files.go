package trust

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/manifest"
)

// SignFiles says which files SignFile reads and writes.
type SignFiles struct {
	Manifest string // the manifest to sign (its exact bytes are signed)
	Key      string // the product's private key: a PEM file, or tpm:FILE (see LoadSigner)
	// TPM opens tpm:FILE keys; nil when no TPM is available.
	TPM    KeyOpener
	Cert   string // the product's certificate (PEM; the first one is used)
	Chain  string // intermediate certificates (PEM), optional
	Output string // where the signed manifest goes
	// DetachedSig, if set, also gets the raw signature (DER), which
	// `openssl dgst -verify` checks against the manifest.
	DetachedSig string
}

// SignFile signs a manifest file with a product key (see Sign) and writes
// the signed manifest, and the detached signature if asked. It returns the
// signer's certificate.
func SignFile(f SignFiles) (_ *x509.Certificate, err error) {
	if f.Manifest == "" || f.Key == "" || f.Cert == "" || f.Output == "" {
		return nil, errors.New("sign: the manifest, key, certificate and output files are required")
	}
	payload, err := bounded.ReadFile(f.Manifest, manifest.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	key, closeKey, err := LoadSigner(f.Key, f.TPM)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	defer func() {
		if cerr := closeKey(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("sign: close key %s: %w", f.Key, cerr))
		}
	}()
	certs, err := LoadCerts(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	certs = certs[:1]
	if f.Chain != "" {
		inter, err := LoadCerts(f.Chain)
		if err != nil {
			return nil, fmt.Errorf("sign: chain: %w", err)
		}
		certs = append(certs, inter...)
	}
	signed, err := Sign(payload, key, certs)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.Output, signed, 0o644); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if f.DetachedSig != "" {
		s, err := ParseSigned(signed)
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		if err := os.WriteFile(f.DetachedSig, s.Signature, 0o644); err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
	}
	return certs[0], nil
}

// MachineRequest says what IssueMachineFile reads and writes.
type MachineRequest struct {
	KeysDir   string // holds the machine-identity CA (IdentityCACert, IdentityCAKey)
	CSR       string // the machine's certificate request (PEM or DER)
	ProductID string
	MachineID string
	ValidFor  time.Duration // DefaultMachineValidity when zero
	Output    string        // where the certificate (PEM) goes
}

// IssueMachineFile issues a machine identity certificate from a CSR file
// with the identity CA of a keys directory (see IssueMachineCert) and
// writes it.
func IssueMachineFile(r MachineRequest) (*x509.Certificate, error) {
	if r.CSR == "" || r.Output == "" {
		return nil, errors.New("issue machine certificate: the request and output files are required")
	}
	b, err := bounded.ReadFile(r.CSR, MaxPEMFileSize)
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: %w", err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	csr, err := x509.ParseCertificateRequest(b)
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: parse request %s: %w", r.CSR, err)
	}
	ca, key, err := LoadCA(filepath.Join(r.KeysDir, IdentityCACert), filepath.Join(r.KeysDir, IdentityCAKey))
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: %w", err)
	}
	cert, err := IssueMachineCert(ca, key, csr, r.ProductID, r.MachineID, r.ValidFor)
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: %w", err)
	}
	if err := os.WriteFile(r.Output, PEMCerts(cert), 0o644); err != nil {
		return nil, fmt.Errorf("issue machine certificate: %w", err)
	}
	return cert, nil
}
