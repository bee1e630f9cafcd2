package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/lazyre"
)

// File names inside a key directory. Other packages depend on them.
const (
	ManifestCACert = "manifest-ca.pem"
	ManifestCAKey  = "manifest-ca.key"
	IdentityCACert = "identity-ca.pem"
	IdentityCAKey  = "identity-ca.key"
	RevokedFile    = "revoked.json"
	ProductsDir    = "products"
	ProductCert    = "product.pem"
	ProductKey     = "product.key"
	ProductChain   = "chain.pem"
)

// Default validity periods.
const (
	DefaultCAValidity      = 20 * 365 * 24 * time.Hour
	DefaultProductValidity = 2 * 365 * 24 * time.Hour
	DefaultMachineValidity = 10 * 365 * 24 * time.Hour
	DefaultCRLValidity     = 365 * 24 * time.Hour
	// backdate allows for clock skew between the signer and the verifier.
	backdate = 5 * time.Minute
)

// now is replaced in tests.
var now = time.Now

// InitOptions configure Init.
type InitOptions struct {
	Org      string        // organisation name, required
	ValidFor time.Duration // CA validity, DefaultCAValidity when zero
	Force    bool          // overwrite existing keys
}

// CAInfo describes a CA written by Init.
type CAInfo struct {
	Cert    string `json:"cert"`
	Key     string `json:"key"`
	Subject string `json:"subject"`
	Serial  string `json:"serial"`
}

// InitResult is what Init wrote.
type InitResult struct {
	Dir        string `json:"dir"`
	ManifestCA CAInfo `json:"manifestCA"`
	IdentityCA CAInfo `json:"identityCA"`
}

// Init creates the offline CAs in dir: the manifest-signing CA (path length
// 0: it signs product certificates directly) and the machine-identity CA.
// Keys are ECDSA P-256, PKCS#8 PEM, mode 0600. Existing keys are an error
// (ErrExists) unless opts.Force.
func Init(dir string, opts InitOptions) (*InitResult, error) {
	if strings.TrimSpace(opts.Org) == "" {
		return nil, errors.New("keys init: an organisation name is required")
	}
	if opts.ValidFor == 0 {
		opts.ValidFor = DefaultCAValidity
	}
	if !opts.Force {
		for _, f := range []string{ManifestCACert, ManifestCAKey, IdentityCACert, IdentityCAKey} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
				return nil, fmt.Errorf("keys init: %s: %w", filepath.Join(dir, f), ErrExists)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys init: %w", err)
	}
	res := &InitResult{Dir: dir}
	for _, ca := range []struct {
		cn, cert, key string
		info          *CAInfo
	}{
		{opts.Org + " Manifest CA", ManifestCACert, ManifestCAKey, &res.ManifestCA},
		{opts.Org + " Machine Identity CA", IdentityCACert, IdentityCAKey, &res.IdentityCA},
	} {
		cert, err := newCA(pkix.Name{Organization: []string{opts.Org}, CommonName: ca.cn}, opts.ValidFor, dir, ca.cert, ca.key, opts.Force)
		if err != nil {
			return nil, fmt.Errorf("keys init: %w", err)
		}
		*ca.info = CAInfo{Cert: filepath.Join(dir, ca.cert), Key: filepath.Join(dir, ca.key), Subject: cert.Subject.String(), Serial: FormatSerial(cert.SerialNumber)}
	}
	if _, err := os.Stat(filepath.Join(dir, RevokedFile)); errors.Is(err, os.ErrNotExist) || opts.Force {
		if err := writeRevoked(dir, &revokedList{Revoked: []RevokedEntry{}}); err != nil {
			return nil, fmt.Errorf("keys init: %w", err)
		}
	}
	return res, nil
}

func newCA(subject pkix.Name, validFor time.Duration, dir, certFile, keyFile string, force bool) (*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             t.Add(-backdate),
		NotAfter:              t.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := writeKey(filepath.Join(dir, keyFile), key, force); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, certFile), pemCert(cert), 0o644, true); err != nil {
		return nil, err
	}
	return cert, nil
}

// ProductOptions configure Product.
type ProductOptions struct {
	Name      string        // product name, [A-Za-z0-9][A-Za-z0-9._-]*
	ProductID string        // UUID; a random UUIDv4 when empty
	ValidFor  time.Duration // DefaultProductValidity when zero (capped at the CA's expiry)
	Force     bool          // overwrite an existing product key
	// Key, if set, is an existing signing key to certify instead of
	// generating product.key: a PEM file or tpm:FILE (see LoadSigner). No
	// key file is written then, and the result's Key is this reference.
	Key string
	TPM KeyOpener // opens tpm:FILE keys
	// CSR, if set, is a certificate request (PEM or DER, see CSRFile) whose
	// key is certified instead: its signature must verify (proof of
	// possession); its subject is ignored. No key file is written.
	CSR string
}

// ProductResult is what Product wrote.
type ProductResult struct {
	Name      string `json:"name"`
	ProductID string `json:"productId"`
	Serial    string `json:"serial"`
	NotAfter  string `json:"notAfter"`
	Cert      string `json:"cert"`
	Key       string `json:"key"`
	Chain     string `json:"chain"`
}

var nameRE = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Product creates a product signing key and certificate signed by the
// manifest-signing CA in dir, under dir/products/NAME. The certificate is
// CA:FALSE, KeyUsage digitalSignature, ExtKeyUsage codeSigning, subject
// CN=NAME, and carries the product ID as the URI SAN urn:uuid:<id>.
func Product(dir string, opts ProductOptions) (*ProductResult, error) {
	if !nameRE.MatchString(opts.Name) {
		return nil, fmt.Errorf("keys product: invalid product name %q (letters, digits, '.', '_', '-'; at most 64)", opts.Name)
	}
	id := opts.ProductID
	if id == "" {
		var err error
		if id, err = NewUUID(); err != nil {
			return nil, err
		}
	}
	id, err := ParseUUID(id)
	if err != nil {
		return nil, fmt.Errorf("keys product: product id: %w", err)
	}
	if opts.ValidFor == 0 {
		opts.ValidFor = DefaultProductValidity
	}
	ca, caKey, err := LoadCA(filepath.Join(dir, ManifestCACert), filepath.Join(dir, ManifestCAKey))
	if err != nil {
		return nil, fmt.Errorf("keys product: %w in %s: %w", ErrNoManifestCA, dir, err)
	}
	pdir := filepath.Join(dir, ProductsDir, opts.Name)
	keyPath := filepath.Join(pdir, ProductKey)
	certPath := filepath.Join(pdir, ProductCert)
	existing := keyPath
	if opts.Key != "" && opts.CSR != "" {
		return nil, errors.New("keys product: give an existing key or a certificate request, not both")
	}
	if opts.Key != "" || opts.CSR != "" {
		existing = certPath
	}
	if _, err := os.Stat(existing); err == nil && !opts.Force {
		return nil, fmt.Errorf("keys product: %s: %w", existing, ErrExists)
	}
	var pub crypto.PublicKey
	var key crypto.Signer
	if opts.Key != "" {
		k, closeKey, err := LoadSigner(opts.Key, opts.TPM)
		if err != nil {
			return nil, fmt.Errorf("keys product: %w", err)
		}
		pub = k.Public()
		if err := closeKey(); err != nil {
			return nil, fmt.Errorf("keys product: close key %s: %w", opts.Key, err)
		}
		if err := checkSigningKey(pub); err != nil {
			return nil, fmt.Errorf("keys product: key %s: %w", opts.Key, err)
		}
	} else if opts.CSR != "" {
		csr, err := readCSR(opts.CSR)
		if err != nil {
			return nil, fmt.Errorf("keys product: %w", err)
		}
		if err := csr.CheckSignature(); err != nil {
			return nil, fmt.Errorf("keys product: request %s: signature does not verify (not signed by its own key): %w", opts.CSR, err)
		}
		if err := checkSigningKey(csr.PublicKey); err != nil {
			return nil, fmt.Errorf("keys product: request %s: %w", opts.CSR, err)
		}
		pub = csr.PublicKey
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		key, pub = k, k.Public()
	}
	if err := os.MkdirAll(pdir, 0o700); err != nil {
		return nil, fmt.Errorf("keys product: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: ca.Subject.Organization, CommonName: opts.Name},
		NotBefore:             t.Add(-backdate),
		NotAfter:              capNotAfter(t.Add(opts.ValidFor), ca),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{{Scheme: "urn", Opaque: "uuid:" + id}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, fmt.Errorf("keys product: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if key != nil {
		if err := writeKey(keyPath, key, opts.Force); err != nil {
			return nil, fmt.Errorf("keys product: %w", err)
		}
	} else {
		keyPath = opts.Key // "" for a CSR: the key is wherever the request came from
	}
	chainPath := filepath.Join(pdir, ProductChain)
	if err := writeFile(certPath, pemCert(cert), 0o644, true); err != nil {
		return nil, fmt.Errorf("keys product: %w", err)
	}
	if err := writeFile(chainPath, nil, 0o644, true); err != nil {
		return nil, fmt.Errorf("keys product: %w", err)
	}
	return &ProductResult{Name: opts.Name, ProductID: id, Serial: FormatSerial(serial),
		NotAfter: cert.NotAfter.UTC().Format(time.RFC3339), Cert: certPath, Key: keyPath, Chain: chainPath}, nil
}

func capNotAfter(t time.Time, ca *x509.Certificate) time.Time {
	if t.After(ca.NotAfter) {
		return ca.NotAfter
	}
	return t
}

// LoadCA reads a CA certificate (the first PEM CERTIFICATE block) and its
// private key (PKCS#8, SEC1 EC or PKCS#1 RSA PEM) and checks that they belong
// together and that the certificate is a CA.
func LoadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certs, err := LoadCerts(certPath)
	if err != nil {
		return nil, nil, err
	}
	ca := certs[0]
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, nil, fmt.Errorf("load CA %s: certificate %q is not a CA (CA:FALSE)", certPath, ca.Subject.CommonName)
	}
	key, err := LoadKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	if !samePublicKey(ca.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("load CA: key %s does not belong to certificate %s", keyPath, certPath)
	}
	return ca, key, nil
}

// LoadCerts reads every PEM CERTIFICATE block of a file (or a single DER
// certificate). It fails if there is none.
func LoadCerts(path string) ([]*x509.Certificate, error) {
	b, err := bounded.ReadFile(path, MaxPEMFileSize)
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	certs, err := ParseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("read certificates %s: %w", path, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("read certificates %s: no certificate found", path)
	}
	return certs, nil
}

// ParseCerts parses PEM CERTIFICATE blocks, or one DER certificate. Empty
// input gives no certificates and no error.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, nil
	}
	if !strings.Contains(string(b), "-----BEGIN") {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, err
		}
		return []*x509.Certificate{c}, nil
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// LoadKey reads a PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA). Only
// ECDSA and RSA keys are accepted.
func LoadKey(path string) (crypto.Signer, error) {
	b, err := bounded.ReadFile(path, MaxPEMFileSize)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	return k, nil
}

// ParseKey parses a PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA).
func ParseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key found")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		switch k := k.(type) {
		case *ecdsa.PrivateKey:
			return k, nil
		case *rsa.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("unsupported key type %T (use ECDSA or RSA)", k)
	}
}

func samePublicKey(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// writeKey writes key as PKCS#8 PEM with mode 0600.
func writeKey(path string, key crypto.Signer, force bool) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600, force)
}

// writeFile writes b atomically (temp file, fsync, rename). Unless
// overwrite, an existing file is an ErrExists error.
func writeFile(path string, b []byte, mode os.FileMode, overwrite bool) error {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
	}
	return atomicfile.Write(path, b, mode)
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// PEMCerts encodes certificates as concatenated PEM blocks.
func PEMCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pemCert(c)...)
	}
	return out
}

// newSerial returns a random positive 127-bit serial number.
func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// FormatSerial prints a serial as 0x-prefixed lower-case hex, the form
// 'vessel keys revoke --serial' accepts and 'openssl x509 -serial' shows
// (without the prefix).
func FormatSerial(s *big.Int) string { return "0x" + s.Text(16) }

// ParseSerial parses a decimal or 0x-prefixed hexadecimal serial number.
func ParseSerial(s string) (*big.Int, error) {
	s = strings.TrimSpace(s)
	n := new(big.Int)
	var ok bool
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		_, ok = n.SetString(s[2:], 16)
	} else {
		_, ok = n.SetString(s, 10)
	}
	if !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("invalid serial %q (decimal, or hexadecimal with 0x)", s)
	}
	return n, nil
}

var uuidRE = lazyre.New(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ParseUUID checks a textual UUID (8-4-4-4-12 hex) and returns it in
// lower case. The nil UUID is rejected.
func ParseUUID(s string) (string, error) {
	if !uuidRE.MatchString(s) {
		return "", fmt.Errorf("%q is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", s)
	}
	s = strings.ToLower(s)
	if s == "00000000-0000-0000-0000-000000000000" {
		return "", errors.New("the nil UUID is not a product ID")
	}
	return s, nil
}

// NewUUID returns a random (version 4) UUID.
func NewUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// ProductID returns the product ID a certificate carries: the UUID of its
// one urn:uuid URI SAN.
func ProductID(c *x509.Certificate) (string, error) {
	var ids []string
	for _, u := range c.URIs {
		if u.Scheme == "urn" && strings.HasPrefix(strings.ToLower(u.Opaque), "uuid:") {
			ids = append(ids, u.Opaque[len("uuid:"):])
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("certificate %q carries %d urn:uuid product IDs, want exactly 1", c.Subject.CommonName, len(ids))
	}
	return ParseUUID(ids[0])
}

// ParseValidity parses a validity period: a Go duration ("36h") or a
// number of days ("90d") or years ("2y", 365 days each).
func ParseValidity(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	unit := time.Duration(0)
	switch {
	case strings.HasSuffix(s, "y"):
		unit = 365 * 24 * time.Hour
	case strings.HasSuffix(s, "d"):
		unit = 24 * time.Hour
	}
	if unit != 0 {
		n, err := strconv.Atoi(s[:len(s)-1])
		if err != nil || n <= 0 || n > 100*365 {
			return 0, fmt.Errorf("invalid validity %q (for example 2y, 90d, 36h)", s)
		}
		return time.Duration(n) * unit, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid validity %q (for example 2y, 90d, 36h)", s)
	}
	return d, nil
}
