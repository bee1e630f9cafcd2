package trust

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
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
	csr, err := readCSR(r.CSR)
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: %w", err)
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

// readCSR reads a certificate request (PEM or DER).
func readCSR(path string) (*x509.CertificateRequest, error) {
	b, err := bounded.ReadFile(path, MaxPEMFileSize)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	csr, err := x509.ParseCertificateRequest(b)
	if err != nil {
		return nil, fmt.Errorf("parse request %s: %w", path, err)
	}
	return csr, nil
}

// CSRFile writes a PEM certificate request with subject CN=name for the
// signing key ref names (a PEM file or tpm:FILE, see LoadSigner), signed
// by that key: the proof of possession an offline CA checks in
// `vessel keys product --csr`.
func CSRFile(ref string, tpm KeyOpener, name, out string) (err error) {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("certificate request: invalid name %q (letters, digits, '.', '_', '-'; at most 64)", name)
	}
	if out == "" {
		return errors.New("certificate request: the output file is required")
	}
	key, closeKey, err := LoadSigner(ref, tpm)
	if err != nil {
		return fmt.Errorf("certificate request: %w", err)
	}
	defer func() {
		if cerr := closeKey(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("certificate request: close key %s: %w", ref, cerr))
		}
	}()
	if err := checkSigningKey(key.Public()); err != nil {
		return fmt.Errorf("certificate request: key %s: %w", ref, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return fmt.Errorf("certificate request: sign with %s: %w", ref, err)
	}
	if err := os.WriteFile(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("certificate request: %w", err)
	}
	return nil
}
