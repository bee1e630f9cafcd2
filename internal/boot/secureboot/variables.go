package secureboot

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"time"
	"unicode/utf16"

	"github.com/vesselos/vessel/internal/boot/pkcs7"
)

// Variable attributes (UEFI 2.10 section 8.2).
const (
	AttrNonVolatile                       uint32 = 0x01
	AttrBootserviceAccess                 uint32 = 0x02
	AttrRuntimeAccess                     uint32 = 0x04
	AttrTimeBasedAuthenticatedWriteAccess uint32 = 0x20
	AttrAppendWrite                       uint32 = 0x40

	// AttrsSecureBootKey are the attributes of PK, KEK, db and dbx (0x27).
	AttrsSecureBootKey = AttrNonVolatile | AttrBootserviceAccess | AttrRuntimeAccess | AttrTimeBasedAuthenticatedWriteAccess
)

// Variable is one UEFI variable as data: what firmware stores and what it
// measures into PCR7 (EV_EFI_VARIABLE_DRIVER_CONFIG digests are computed
// from Name, GUID and Data). A PCR7 predictor takes these as input.
type Variable struct {
	Name       string `json:"name"`
	GUID       GUID   `json:"guid"`
	Attributes uint32 `json:"attributes"`
	Data       []byte `json:"data"`
}

// UTF16Name is the variable name in UTF-16LE without a terminating NUL, as
// authenticated-variable signatures and PCR7 events hash it.
func (v Variable) UTF16Name() []byte {
	var b bytes.Buffer
	for _, c := range utf16.Encode([]rune(v.Name)) {
		binary.Write(&b, binary.LittleEndian, c)
	}
	return b.Bytes()
}

// EFITime encodes t (converted to UTC, whole seconds) as an EFI_TIME with
// the nanosecond, time zone and daylight fields zero, as authenticated
// variables require.
func EFITime(t time.Time) [16]byte {
	t = t.UTC()
	var e [16]byte
	binary.LittleEndian.PutUint16(e[0:], uint16(t.Year()))
	e[2], e[3], e[4], e[5], e[6] = byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second())
	return e
}

// ParseEFITime decodes an EFI_TIME (time zone ignored).
func ParseEFITime(e []byte) time.Time {
	return time.Date(int(binary.LittleEndian.Uint16(e[0:])), time.Month(e[2]), int(e[3]), int(e[4]), int(e[5]), int(e[6]),
		int(binary.LittleEndian.Uint32(e[8:])), time.UTC)
}

// signedMessage is what an EFI_VARIABLE_AUTHENTICATION_2 signature covers.
func signedMessage(v Variable, ts [16]byte) []byte {
	var m bytes.Buffer
	m.Write(v.UTF16Name())
	m.Write(v.GUID[:])
	binary.Write(&m, binary.LittleEndian, v.Attributes)
	m.Write(ts[:])
	m.Write(v.Data)
	return m.Bytes()
}

const winCertHeaderSize = 4 + 2 + 2 + 16 // WIN_CERTIFICATE_UEFI_GUID without CertData

// SignedUpdate returns an authenticated variable update (the .auth format of
// efitools' sign-efi-sig-list and efi-updatevar): EFI_VARIABLE_AUTHENTICATION_2
// (timestamp + WIN_CERTIFICATE_UEFI_GUID with a detached PKCS#7 signature by
// key) followed by v.Data. To write it through efivarfs, prefix the 4-byte
// little-endian attributes (v.Attributes).
func SignedUpdate(v Variable, ts time.Time, key crypto.Signer, cert *x509.Certificate) ([]byte, error) {
	t := EFITime(ts)
	sd, err := pkcs7.SignDetached(key, cert, signedMessage(v, t))
	if err != nil {
		return nil, fmt.Errorf("sign %s update: %w", v.Name, err)
	}
	var b bytes.Buffer
	b.Write(t[:])
	binary.Write(&b, binary.LittleEndian, uint32(winCertHeaderSize+len(sd)))
	binary.Write(&b, binary.LittleEndian, uint16(0x0200)) // WIN_CERT_REVISION_2_0
	binary.Write(&b, binary.LittleEndian, uint16(0x0EF1)) // WIN_CERT_TYPE_EFI_GUID
	b.Write(CertTypePKCS7[:])
	b.Write(sd)
	b.Write(v.Data)
	return b.Bytes(), nil
}

// AuthUpdate is a parsed .auth file.
type AuthUpdate struct {
	Time       time.Time
	SignedData []byte // bare PKCS#7 SignedData (no ContentInfo)
	Data       []byte // the new variable content (a signature database)
}

// ParseSignedUpdate splits an .auth file.
func ParseSignedUpdate(b []byte) (*AuthUpdate, error) {
	if len(b) < 16+winCertHeaderSize {
		return nil, fmt.Errorf("parse authenticated variable: %d bytes is too short", len(b))
	}
	n := int(binary.LittleEndian.Uint32(b[16:]))
	rev := binary.LittleEndian.Uint16(b[20:])
	typ := binary.LittleEndian.Uint16(b[22:])
	if rev != 0x0200 || typ != 0x0EF1 || GUID(b[24:40]) != CertTypePKCS7 {
		return nil, fmt.Errorf("parse authenticated variable: not a WIN_CERTIFICATE_UEFI_GUID with PKCS#7 (revision %#x, type %#x, %s)", rev, typ, GUID(b[24:40]))
	}
	if n < winCertHeaderSize || 16+n > len(b) {
		return nil, fmt.Errorf("parse authenticated variable: certificate length %d does not fit in %d bytes", n, len(b))
	}
	return &AuthUpdate{Time: ParseEFITime(b[:16]), SignedData: bytes.Clone(b[16+winCertHeaderSize : 16+n]), Data: bytes.Clone(b[16+n:])}, nil
}

// Message returns what the update's signature covers, for variable v (name,
// GUID, attributes) holding u.Data.
func (u *AuthUpdate) Message(name string, guid GUID, attrs uint32) []byte {
	return signedMessage(Variable{Name: name, GUID: guid, Attributes: attrs, Data: u.Data}, EFITime(u.Time))
}
