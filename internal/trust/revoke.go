package trust

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/manifest/strictjson"
)

// RevokedEntry is one revoked serial in DIR/revoked.json.
type RevokedEntry struct {
	Serial    string    `json:"serial"` // 0x-hex
	RevokedAt time.Time `json:"revokedAt"`
}

type revokedList struct {
	CRLNumber int64          `json:"crlNumber"`
	Revoked   []RevokedEntry `json:"revoked"`
}

func readRevoked(dir string) (*revokedList, error) {
	b, err := bounded.ReadFile(filepath.Join(dir, RevokedFile), maxStateSize)
	if os.IsNotExist(err) {
		return &revokedList{Revoked: []RevokedEntry{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var l revokedList
	if err := strictjson.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, RevokedFile), err)
	}
	if l.Revoked == nil {
		l.Revoked = []RevokedEntry{}
	}
	return &l, nil
}

func writeRevoked(dir string, l *revokedList) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, RevokedFile), append(b, '\n'), 0o644, true)
}

// Revoke records serial as revoked in dir/revoked.json. The next CRL made
// by CRL lists it. Revoking a serial twice is not an error.
func Revoke(dir string, serial *big.Int) error {
	if _, err := os.Stat(filepath.Join(dir, ManifestCACert)); err != nil {
		return fmt.Errorf("keys revoke: %w (is %s a key directory?)", err, dir)
	}
	l, err := readRevoked(dir)
	if err != nil {
		return fmt.Errorf("keys revoke: %w", err)
	}
	s := FormatSerial(serial)
	for _, e := range l.Revoked {
		if e.Serial == s {
			return nil
		}
	}
	l.Revoked = append(l.Revoked, RevokedEntry{Serial: s, RevokedAt: now().UTC().Truncate(time.Second)})
	if err := writeRevoked(dir, l); err != nil {
		return fmt.Errorf("keys revoke: %w", err)
	}
	return nil
}

// CRL issues a new certificate revocation list, signed by the
// manifest-signing CA in dir, listing every revoked serial, valid for
// validFor (DefaultCRLValidity when zero). It returns PEM ("X509 CRL"),
// which 'openssl crl -CAfile manifest-ca.pem' verifies.
func CRL(dir string, validFor time.Duration) ([]byte, error) {
	if validFor <= 0 {
		validFor = DefaultCRLValidity
	}
	ca, key, err := LoadCA(filepath.Join(dir, ManifestCACert), filepath.Join(dir, ManifestCAKey))
	if err != nil {
		return nil, fmt.Errorf("keys crl: %w", err)
	}
	l, err := readRevoked(dir)
	if err != nil {
		return nil, fmt.Errorf("keys crl: %w", err)
	}
	l.CRLNumber++
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(l.CRLNumber),
		ThisUpdate: now().Add(-backdate),
		NextUpdate: capNotAfter(now().Add(validFor), ca),
	}
	for _, e := range l.Revoked {
		n, err := ParseSerial(e.Serial)
		if err != nil {
			return nil, fmt.Errorf("keys crl: %s: %w", RevokedFile, err)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: e.RevokedAt})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca, key)
	if err != nil {
		return nil, fmt.Errorf("keys crl: %w", err)
	}
	if err := writeRevoked(dir, l); err != nil {
		return nil, fmt.Errorf("keys crl: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// ParseCRL parses a PEM or DER certificate revocation list.
func ParseCRL(b []byte) (*x509.RevocationList, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block is %q, want X509 CRL", blk.Type)
		}
		b = blk.Bytes
	}
	return x509.ParseRevocationList(b)
}
