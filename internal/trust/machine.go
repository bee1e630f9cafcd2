package trust

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/lazyre"
)

// MachineURIPrefix starts the URI SAN that carries a machine ID.
const MachineURIPrefix = "urn:vessel:machine:"

var machineIDRE = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// IssueMachineCert turns a machine's certificate request into its identity
// certificate, signed by the machine-identity CA. The CSR's self-signature is
// checked. The certificate has subject CN=machineID, URI SANs
// urn:uuid:<productID> and urn:vessel:machine:<machineID>, KeyUsage
// digitalSignature (plus keyEncipherment for RSA keys), ExtKeyUsage
// clientAuth and serverAuth, CA:FALSE, and expires after validFor
// (DefaultMachineValidity when zero), but never after the CA.
func IssueMachineCert(ca *x509.Certificate, caKey crypto.Signer, csr *x509.CertificateRequest, productID, machineID string, validFor time.Duration) (*x509.Certificate, error) {
	if ca == nil || caKey == nil || csr == nil {
		return nil, errors.New("issue machine certificate: CA, CA key and CSR are required")
	}
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, fmt.Errorf("issue machine certificate: %q is not a CA certificate", ca.Subject.CommonName)
	}
	if !samePublicKey(ca.PublicKey, caKey.Public()) {
		return nil, errors.New("issue machine certificate: the CA key does not belong to the CA certificate")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("issue machine certificate: CSR signature: %w", err)
	}
	pid, err := ParseUUID(productID)
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: product ID: %w", err)
	}
	if !machineIDRE.MatchString(machineID) {
		return nil, fmt.Errorf("issue machine certificate: invalid machine ID %q (letters, digits, '.', '_', ':', '-')", machineID)
	}
	if validFor <= 0 {
		validFor = DefaultMachineValidity
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: ca.Subject.Organization, CommonName: machineID},
		NotBefore:             t.Add(-backdate),
		NotAfter:              capNotAfter(t.Add(validFor), ca),
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs: []*url.URL{
			{Scheme: "urn", Opaque: "uuid:" + pid},
			{Scheme: "urn", Opaque: strings.TrimPrefix(MachineURIPrefix, "urn:") + machineID},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, csr.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue machine certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// MachineID returns the machine ID of a machine identity certificate.
func MachineID(c *x509.Certificate) (string, error) {
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, MachineURIPrefix) {
			return strings.TrimPrefix(s, MachineURIPrefix), nil
		}
	}
	return "", fmt.Errorf("certificate %q carries no %s URI", c.Subject.CommonName, MachineURIPrefix)
}
