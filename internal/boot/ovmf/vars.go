// Package ovmf writes and reads OVMF variable stores (OVMF_VARS*.fd): a
// firmware volume (EFI_SYSTEM_NV_DATA_FV_GUID) holding an authenticated
// variable store. Writing PK, KEK, db (and dbx) with SecureBootEnable=1 and
// CustomMode=0 into a copy of the empty template gives a VARS file whose
// firmware enforces those keys from the first boot, with no enrollment step
// (for VMs and tests; real machines enroll the .auth files of
// internal/boot/secureboot in setup mode).
//
// The layout (EDK2 MdeModulePkg VariableFormat.h, checked against Debian's
// ovmf 2022.11): EFI_FIRMWARE_VOLUME_HEADER (its length in HeaderLength,
// 0x48 here), then VARIABLE_STORE_HEADER (28 bytes: the authenticated
// variable GUID, Size, Format 0x5A, State 0xFE), then variables, each a
// 60-byte AUTHENTICATED_VARIABLE_HEADER (StartId 0x55AA, State 0x3F for an
// added variable, Attributes, MonotonicCount, TimeStamp, PubKeyIndex,
// NameSize, DataSize, VendorGuid), the UTF-16LE name with its NUL, the data,
// padded to 4 bytes. Free space is 0xFF.
package ovmf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf16"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// DefaultTemplate is Debian's empty 4 MiB OVMF variable store.
const DefaultTemplate = "/usr/share/OVMF/OVMF_VARS_4M.fd"

var (
	nvDataFVGUID      = secureboot.MustGUID("fff12b8d-7696-4c8b-a985-2747075b4f50")
	authVariableGUID  = secureboot.MustGUID("aaf32c78-947b-439a-a180-2e144ec37792")
	plainVariableGUID = secureboot.MustGUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
)

const (
	storeHeaderSize = 28
	varHeaderSize   = 60
	startID         = 0x55AA
	varAdded        = 0x3F
	formatted       = 0x5A
	healthy         = 0xFE
)

// ErrNotTemplate means the file is not an OVMF variable store this package knows.
var ErrNotTemplate = errors.New("not an OVMF variable store (OVMF_VARS*.fd)")

// StoredVariable is one variable found in a store.
type StoredVariable struct {
	secureboot.Variable
	State  byte `json:"state"`
	Offset int  `json:"offset"`
}

// Store is a parsed variable store image.
type Store struct {
	data       []byte
	start, end int // variable area: first header, end of the store
	next       int // offset of the first free byte (4-aligned)
	Variables  []StoredVariable
}

// Parse validates the firmware volume and variable store headers and reads
// the variables.
func Parse(b []byte) (*Store, error) {
	if len(b) < 0x48+storeHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrNotTemplate, len(b))
	}
	if string(b[0x28:0x2c]) != "_FVH" {
		return nil, fmt.Errorf("%w: no firmware volume signature _FVH at 0x28", ErrNotTemplate)
	}
	if g := secureboot.GUID(b[0x10:0x20]); g != nvDataFVGUID {
		return nil, fmt.Errorf("%w: firmware volume file system %s is not the NV data GUID %s", ErrNotTemplate, g, nvDataFVGUID)
	}
	fvLen := binary.LittleEndian.Uint64(b[0x20:])
	hdrLen := int(binary.LittleEndian.Uint16(b[0x30:]))
	if fvLen > uint64(len(b)) || hdrLen < 0x38 || hdrLen%2 != 0 || hdrLen+storeHeaderSize > len(b) {
		return nil, fmt.Errorf("%w: firmware volume length %#x or header length %#x does not fit the %#x-byte file", ErrNotTemplate, fvLen, hdrLen, len(b))
	}
	var sum uint16
	for i := 0; i < hdrLen; i += 2 {
		sum += binary.LittleEndian.Uint16(b[i:])
	}
	if sum != 0 {
		return nil, fmt.Errorf("%w: firmware volume header checksum is wrong", ErrNotTemplate)
	}
	if rev := b[0x37]; rev != 2 {
		return nil, fmt.Errorf("%w: firmware volume revision %d, want 2", ErrNotTemplate, rev)
	}
	sh := b[hdrLen:]
	switch g := secureboot.GUID(sh[:16]); g {
	case authVariableGUID:
	case plainVariableGUID:
		return nil, fmt.Errorf("%w: the variable store is not authenticated (a firmware built without Secure Boot)", ErrNotTemplate)
	default:
		return nil, fmt.Errorf("%w: variable store GUID %s", ErrNotTemplate, g)
	}
	size := int(binary.LittleEndian.Uint32(sh[16:]))
	if sh[20] != formatted || sh[21] != healthy {
		return nil, fmt.Errorf("%w: variable store format %#x state %#x (want formatted 0x5a, healthy 0xfe)", ErrNotTemplate, sh[20], sh[21])
	}
	if size < storeHeaderSize || uint64(hdrLen+size) > fvLen {
		return nil, fmt.Errorf("%w: variable store size %#x does not fit in the firmware volume", ErrNotTemplate, size)
	}
	s := &Store{data: b, start: align4(hdrLen + storeHeaderSize), end: hdrLen + size}
	off := s.start
	for off+varHeaderSize <= s.end && binary.LittleEndian.Uint16(b[off:]) == startID {
		h := b[off:]
		nameSize := int(binary.LittleEndian.Uint32(h[36:]))
		dataSize := int(binary.LittleEndian.Uint32(h[40:]))
		if nameSize%2 != 0 || off+varHeaderSize+nameSize+dataSize > s.end {
			return nil, fmt.Errorf("%w: variable at %#x runs past the store", ErrNotTemplate, off)
		}
		name := b[off+varHeaderSize : off+varHeaderSize+nameSize]
		u := make([]uint16, 0, nameSize/2)
		for i := 0; i+1 < len(name); i += 2 {
			if c := binary.LittleEndian.Uint16(name[i:]); c != 0 {
				u = append(u, c)
			}
		}
		v := StoredVariable{State: h[2], Offset: off, Variable: secureboot.Variable{
			Name: string(utf16.Decode(u)), GUID: secureboot.GUID(h[44:60]), Attributes: binary.LittleEndian.Uint32(h[4:]),
			Data: bytes.Clone(b[off+varHeaderSize+nameSize : off+varHeaderSize+nameSize+dataSize]),
		}}
		s.Variables = append(s.Variables, v)
		off = align4(off + varHeaderSize + nameSize + dataSize)
	}
	s.next = off
	for i := off; i < s.end; i++ {
		if b[i] != 0xFF {
			return nil, fmt.Errorf("%w: byte %#x after the last variable (%#x) is %#x, not free space", ErrNotTemplate, i, off, b[i])
		}
	}
	return s, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// Free is the number of bytes left in the store.
func (s *Store) Free() int { return s.end - s.next }

// Active returns the variables in the added state (not deleted).
func (s *Store) Active() []StoredVariable {
	var out []StoredVariable
	for _, v := range s.Variables {
		if v.State == varAdded {
			out = append(out, v)
		}
	}
	return out
}

// Append adds a variable (TimeStamp and MonotonicCount zero: any later
// authenticated update is newer).
func (s *Store) Append(v secureboot.Variable) error {
	name := append(v.UTF16Name(), 0, 0)
	total := varHeaderSize + len(name) + len(v.Data)
	if s.next+total > s.end {
		return fmt.Errorf("variable %s (%d bytes) does not fit: %d bytes free in the store", v.Name, total, s.Free())
	}
	h := s.data[s.next:]
	clear(h[:total])
	binary.LittleEndian.PutUint16(h[0:], startID)
	h[2] = varAdded
	binary.LittleEndian.PutUint32(h[4:], v.Attributes)
	binary.LittleEndian.PutUint32(h[36:], uint32(len(name)))
	binary.LittleEndian.PutUint32(h[40:], uint32(len(v.Data)))
	copy(h[44:60], v.GUID[:])
	copy(h[varHeaderSize:], name)
	copy(h[varHeaderSize+len(name):], v.Data)
	// Padding up to 4 bytes stays 0xFF, as EDK2 leaves it.
	s.Variables = append(s.Variables, StoredVariable{Variable: v, State: varAdded, Offset: s.next})
	s.next = align4(s.next + total)
	return nil
}

// Bytes returns the image.
func (s *Store) Bytes() []byte { return s.data }

// SecureBootVariables returns the keys' variables followed by
// SecureBootEnable = 1 and CustomMode = 0, as Write stores them.
func SecureBootVariables(keys []secureboot.Variable) []secureboot.Variable {
	const nvbs = secureboot.AttrNonVolatile | secureboot.AttrBootserviceAccess
	return append(append([]secureboot.Variable(nil), keys...),
		secureboot.Variable{Name: "SecureBootEnable", GUID: secureboot.SecureBootEnableGUID, Attributes: nvbs, Data: []byte{1}},
		secureboot.Variable{Name: "CustomMode", GUID: secureboot.CustomModeGUID, Attributes: nvbs, Data: []byte{0}})
}

// Write returns a copy of an empty template with vars added. A template
// that already holds variables is refused.
func Write(template []byte, vars []secureboot.Variable) (*Store, error) {
	s, err := Parse(bytes.Clone(template))
	if err != nil {
		return nil, err
	}
	if len(s.Variables) > 0 {
		var names []string
		seen := map[string]bool{}
		for _, v := range s.Variables {
			if !seen[v.Name] {
				seen[v.Name] = true
				names = append(names, v.Name)
			}
		}
		if len(names) > 6 {
			names = append(names[:6], fmt.Sprintf("and %d more", len(names)-6))
		}
		return nil, fmt.Errorf("the template is not empty (it holds %s): start from the empty OVMF_VARS file", strings.Join(names, ", "))
	}
	for _, v := range vars {
		if err := s.Append(v); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// MakeOptions are the file inputs of Make.
type MakeOptions struct {
	Keys     string // a key directory of 'vessel keys uefi'
	Template string // "": DefaultTemplate
	DBX      string // optional: SHA-256 hex digests one per line, or an EFI signature list
	Output   string
}

// MakeResult describes a written VARS file.
type MakeResult struct {
	Path      string   `json:"path"`
	Template  string   `json:"template"`
	Owner     string   `json:"owner"`
	Variables []string `json:"variables"`
	Free      int      `json:"freeBytes"`
}

// Make writes an OVMF VARS file enforcing the key set in o.Keys.
func Make(o MakeOptions) (*MakeResult, error) {
	if o.Template == "" {
		o.Template = DefaultTemplate
	}
	ks, err := secureboot.Load(o.Keys)
	if err != nil {
		return nil, err
	}
	var dbx []byte
	if o.DBX != "" {
		b, err := os.ReadFile(o.DBX)
		if err != nil {
			return nil, fmt.Errorf("read dbx: %w", err)
		}
		if dbx, err = secureboot.ParseDBX(b, ks.Owner); err != nil {
			return nil, fmt.Errorf("read dbx %s: %w", o.DBX, err)
		}
	}
	keys, err := ks.Variables(dbx)
	if err != nil {
		return nil, err
	}
	tmpl, err := os.ReadFile(o.Template)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read template: %w (install Debian's ovmf package, or use another empty template)", err)
		}
		return nil, fmt.Errorf("read template: %w", err)
	}
	vars := SecureBootVariables(keys)
	s, err := Write(tmpl, vars)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", o.Template, err)
	}
	if err := atomicfile.Write(o.Output, s.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", o.Output, err)
	}
	res := &MakeResult{Path: o.Output, Template: o.Template, Owner: ks.Owner.String(), Free: s.Free()}
	for _, v := range vars {
		res.Variables = append(res.Variables, v.Name)
	}
	return res, nil
}
