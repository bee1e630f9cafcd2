package secureboot

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is an EFI_GUID in the byte order firmware stores it: the first three
// fields little-endian, the last eight bytes as written. (go-uefi's
// EFIGUID.Bytes() is big-endian; this type never goes through it.)
type GUID [16]byte

// ParseGUID parses the textual form 8be4df61-93ca-11d2-aa0d-00e098032b8c.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	s = strings.TrimSpace(s)
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 ||
		len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("parse GUID %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	raw, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("parse GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g, nil
}

// MustGUID is ParseGUID for constants.
func MustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// NewGUID returns a random (version 4) GUID.
func NewGUID() (GUID, error) {
	var g GUID
	if _, err := rand.Read(g[:]); err != nil {
		return g, fmt.Errorf("random GUID: %w", err)
	}
	g[7] = g[7]&0x0f | 0x40 // version 4 (high nibble of Data3, stored little-endian)
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g, nil
}

func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]),
		binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// MarshalText makes a GUID print as its textual form in JSON.
func (g GUID) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText parses the textual form.
func (g *GUID) UnmarshalText(b []byte) error {
	v, err := ParseGUID(string(b))
	if err != nil {
		return err
	}
	*g = v
	return nil
}

// Well-known GUIDs.
var (
	// GlobalVariable owns PK, KEK, SecureBoot, SetupMode.
	GlobalVariable = MustGUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
	// ImageSecurityDatabase owns db and dbx.
	ImageSecurityDatabase = MustGUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
	// SecureBootEnableGUID owns OVMF's SecureBootEnable switch.
	SecureBootEnableGUID = MustGUID("f0a30bc7-af08-4556-99c4-001009c93a44")
	// CustomModeGUID owns EDK2's CustomMode switch.
	CustomModeGUID = MustGUID("c076ec0c-7028-4399-a072-71ee5c448b9f")

	// CertX509 is EFI_CERT_X509_GUID: a signature list of DER certificates.
	CertX509 = MustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
	// CertSHA256 is EFI_CERT_SHA256_GUID: a signature list of SHA-256 image digests.
	CertSHA256 = MustGUID("c1c41626-504c-4092-aca9-41f936934328")
	// CertTypePKCS7 is EFI_CERT_TYPE_PKCS7_GUID (WIN_CERTIFICATE_UEFI_GUID payloads).
	CertTypePKCS7 = MustGUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
)
