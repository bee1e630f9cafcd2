// Package pcr7 predicts, offline, the SHA-256 value of PCR7 that UEFI
// firmware with Secure Boot on leaves after it loads a signed UKI, and
// reads the same events back from a machine's TCG event log, so that a
// prediction that does not match can be explained event by event.
//
// What EDK2's OVMF (Debian's ovmf 2022.11, checked against a live boot)
// measures into PCR7, in order:
//
//  1. EV_EFI_VARIABLE_DRIVER_CONFIG for SecureBoot, PK, KEK, db and dbx
//     (Tcg2Dxe MeasureAllSecureVariables). A variable that does not exist
//     is measured with no data (length 0); SecureBoot is one byte, 01 when
//     the firmware enforces signatures.
//  2. EV_SEPARATOR with the four bytes 00000000, when the firmware hands
//     over to boot applications.
//  3. EV_EFI_VARIABLE_AUTHORITY "db" when an image is verified against db
//     (DxeImageVerificationLib): the data is the EFI_SIGNATURE_DATA that
//     matched, i.e. the entry's owner GUID followed by the certificate DER.
//     Each distinct entry is measured once per boot.
//
// Every digest is SHA-256 over the event's UEFI_VARIABLE_DATA: the vendor
// GUID (16 bytes, little-endian fields), the name length in UTF-16
// characters (u64), the data length (u64), the UTF-16LE name without its
// NUL, then the data.
package pcr7

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"unicode/utf16"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// Event types measured into PCR7 (TCG PC Client Platform Firmware Profile).
const (
	EvSeparator                uint32 = 0x00000004
	EvEFIAction                uint32 = 0x80000007
	EvEFIVariableDriverConfig  uint32 = 0x80000001
	EvEFIVariableAuthority     uint32 = 0x800000E0
	EvEFIPlatformFirmwareBlob  uint32 = 0x80000008
	evNoAction                 uint32 = 0x00000003
	evEFIVariableBoot          uint32 = 0x80000002
	evEFIBootServicesApp       uint32 = 0x80000003
	evEFIHandoffTables         uint32 = 0x80000009
	evEFIGPTEvent              uint32 = 0x80000006
	evEFIVariableBoot2         uint32 = 0x8000000C
	evEFIBootServicesDriver    uint32 = 0x80000004
	evEFIRuntimeServicesDriver uint32 = 0x80000005
	evEFIPlatformFirmwareBlob2 uint32 = 0x8000000A
	evEFISPDMFirmwareBlob      uint32 = 0x800000E1
	evEFISPDMFirmwareConfig    uint32 = 0x800000E2
	evEFIHandoffTables2        uint32 = 0x8000000B
	evCompactHash              uint32 = 0x0000000C
	evIPL                      uint32 = 0x0000000D
	evSCRTMVersion             uint32 = 0x00000008
	evPostCode                 uint32 = 0x00000001
	evAction                   uint32 = 0x00000005
	evEventTag                 uint32 = 0x00000006
	evSCRTMContents            uint32 = 0x00000007
	evNonhostConfig            uint32 = 0x00000010
	evTableOfDevices           uint32 = 0x0000000B
	evOmitBootDeviceEvents     uint32 = 0x00000012
)

var typeNames = map[uint32]string{
	evPostCode: "EV_POST_CODE", evNoAction: "EV_NO_ACTION", EvSeparator: "EV_SEPARATOR", evAction: "EV_ACTION",
	evEventTag: "EV_EVENT_TAG", evSCRTMContents: "EV_S_CRTM_CONTENTS", evSCRTMVersion: "EV_S_CRTM_VERSION",
	evTableOfDevices: "EV_TABLE_OF_DEVICES", evCompactHash: "EV_COMPACT_HASH", evIPL: "EV_IPL",
	evNonhostConfig: "EV_NONHOST_CONFIG", evOmitBootDeviceEvents: "EV_OMIT_BOOT_DEVICE_EVENTS",
	EvEFIVariableDriverConfig: "EV_EFI_VARIABLE_DRIVER_CONFIG", evEFIVariableBoot: "EV_EFI_VARIABLE_BOOT",
	evEFIBootServicesApp: "EV_EFI_BOOT_SERVICES_APPLICATION", evEFIBootServicesDriver: "EV_EFI_BOOT_SERVICES_DRIVER",
	evEFIRuntimeServicesDriver: "EV_EFI_RUNTIME_SERVICES_DRIVER", evEFIGPTEvent: "EV_EFI_GPT_EVENT",
	EvEFIAction: "EV_EFI_ACTION", EvEFIPlatformFirmwareBlob: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	evEFIHandoffTables: "EV_EFI_HANDOFF_TABLES", evEFIPlatformFirmwareBlob2: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	evEFIHandoffTables2: "EV_EFI_HANDOFF_TABLES2", evEFIVariableBoot2: "EV_EFI_VARIABLE_BOOT2",
	EvEFIVariableAuthority: "EV_EFI_VARIABLE_AUTHORITY", evEFISPDMFirmwareBlob: "EV_EFI_SPDM_FIRMWARE_BLOB",
	evEFISPDMFirmwareConfig: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

// TypeName is the specification's name of an event type, or its hex value.
func TypeName(t uint32) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("%#08x", t)
}

// Hex is bytes that print as lower-case hex (also in JSON).
type Hex []byte

func (h Hex) String() string { return hex.EncodeToString(h) }

// MarshalText prints hex.
func (h Hex) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// Event is one PCR7 measurement: predicted, or read from a log.
type Event struct {
	Type        uint32 `json:"type"`
	TypeName    string `json:"typeName"`
	Description string `json:"description"` // e.g. `PK (1 signature list, 1 entry)`, `db authority CN=...`
	Digest      Hex    `json:"digest"`      // SHA-256
	Data        []byte `json:"-"`           // the event data as logged
}

// Result is a PCR7 value and the events that made it.
type Result struct {
	PCR7   Hex     `json:"pcr7"`
	Events []Event `json:"events"`
}

// Inputs are what the firmware measures.
type Inputs struct {
	// SecureBoot is the value of the SecureBoot variable: true when the
	// firmware enforces signatures (PK enrolled, SecureBootEnable not 0).
	SecureBoot bool
	// PK, KEK, DB, DBX are the variables' contents (signature lists); nil
	// means the variable does not exist and is measured with no data.
	PK, KEK, DB, DBX []byte
	// Authority is the EFI_SIGNATURE_DATA (owner GUID + certificate DER) of
	// the db entry that verified the loaded image; nil: no image was
	// verified (Secure Boot off), so no authority event.
	Authority []byte
}

// VariableData is the UEFI_VARIABLE_DATA structure measured for a variable.
func VariableData(guid secureboot.GUID, name string, data []byte) []byte {
	u := utf16.Encode([]rune(name))
	var b bytes.Buffer
	b.Write(guid[:])
	binary.Write(&b, binary.LittleEndian, uint64(len(u)))
	binary.Write(&b, binary.LittleEndian, uint64(len(data)))
	for _, c := range u {
		binary.Write(&b, binary.LittleEndian, c)
	}
	b.Write(data)
	return b.Bytes()
}

// Separator is the EV_SEPARATOR event data (no error).
var Separator = []byte{0, 0, 0, 0}

// Predict computes PCR7 and its events from in.
func Predict(in Inputs) *Result {
	sb := byte(0)
	if in.SecureBoot {
		sb = 1
	}
	var evs []Event
	for _, v := range []struct {
		name string
		guid secureboot.GUID
		data []byte
	}{
		{"SecureBoot", secureboot.GlobalVariable, []byte{sb}},
		{secureboot.PK, secureboot.GlobalVariable, in.PK},
		{secureboot.KEK, secureboot.GlobalVariable, in.KEK},
		{secureboot.DB, secureboot.ImageSecurityDatabase, in.DB},
		{"dbx", secureboot.ImageSecurityDatabase, in.DBX},
	} {
		evs = append(evs, newEvent(EvEFIVariableDriverConfig, VariableData(v.guid, v.name, v.data)))
	}
	evs = append(evs, newEvent(EvSeparator, Separator))
	if in.Authority != nil {
		evs = append(evs, newEvent(EvEFIVariableAuthority, VariableData(secureboot.ImageSecurityDatabase, secureboot.DB, in.Authority)))
	}
	return &Result{PCR7: extend(evs), Events: evs}
}

func newEvent(typ uint32, data []byte) Event {
	d := sha256.Sum256(data)
	e := Event{Type: typ, TypeName: TypeName(typ), Digest: d[:], Data: data}
	e.Description = describe(typ, data)
	return e
}

// extend replays events from a zero PCR.
func extend(evs []Event) Hex {
	v := make([]byte, sha256.Size)
	for _, e := range evs {
		h := sha256.New()
		h.Write(v)
		h.Write(e.Digest)
		v = h.Sum(nil)
	}
	return v
}

// KeySetInputs are the inputs for a machine enrolled with ks (as 'vessel
// boot vars' and the .auth files enroll it) and dbx (a signature database,
// nil for none), booting an image signed by signer (nil: ks's db
// certificate).
func KeySetInputs(ks *secureboot.KeySet, dbx []byte, signer *x509.Certificate) (Inputs, error) {
	vars, err := ks.Variables(dbx)
	if err != nil {
		return Inputs{}, err
	}
	in := Inputs{SecureBoot: true}
	for _, v := range vars {
		in.set(v.Name, v.Data)
	}
	if signer == nil {
		signer = ks.DB.Cert
	}
	if in.Authority, err = FindAuthority(in.DB, signer); err != nil {
		return Inputs{}, err
	}
	return in, nil
}

func (in *Inputs) set(name string, data []byte) {
	switch name {
	case secureboot.PK:
		in.PK = data
	case secureboot.KEK:
		in.KEK = data
	case secureboot.DB:
		in.DB = data
	case "dbx":
		in.DBX = data
	}
}

// ErrNotInDB means the signer's certificate is not an entry of db: the
// firmware would refuse an image it signed.
var ErrNotInDB = errors.New("not in db")

// FindAuthority returns the EFI_SIGNATURE_DATA of db whose certificate is
// signer: what the firmware measures when signer's signature verifies.
func FindAuthority(db []byte, signer *x509.Certificate) ([]byte, error) {
	lists, err := secureboot.ParseLists(db)
	if err != nil {
		return nil, fmt.Errorf("db: %w", err)
	}
	for _, l := range lists {
		if l.Type != secureboot.CertX509 {
			continue
		}
		for _, s := range l.Signatures {
			if bytes.Equal(s.Data, signer.Raw) {
				return append(append([]byte(nil), s.Owner[:]...), s.Data...), nil
			}
		}
	}
	return nil, fmt.Errorf("signer %s: %w (the firmware would refuse images it signs)", signer.Subject, ErrNotInDB)
}
