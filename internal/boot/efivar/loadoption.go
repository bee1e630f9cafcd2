package efivar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// LoadOptionActive marks a boot entry the boot manager may start.
const LoadOptionActive uint32 = 0x1

// LoadOption is an EFI_LOAD_OPTION: the data of a Boot#### variable.
type LoadOption struct {
	Attributes  uint32
	Description string
	FilePath    []byte // a device path list, End node included
	Optional    []byte
}

// Bytes encodes the load option.
func (o *LoadOption) Bytes() []byte {
	b := binary.LittleEndian.AppendUint32(nil, o.Attributes)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(o.FilePath)))
	b = append(b, ucs2(o.Description)...)
	b = append(b, o.FilePath...)
	return append(b, o.Optional...)
}

// ParseLoadOption decodes a Boot#### variable's data.
func ParseLoadOption(b []byte) (*LoadOption, error) {
	if len(b) < 6 {
		return nil, fmt.Errorf("load option: %d bytes, shorter than its header", len(b))
	}
	o := &LoadOption{Attributes: binary.LittleEndian.Uint32(b)}
	pathLen := int(binary.LittleEndian.Uint16(b[4:]))
	rest := b[6:]
	var desc []uint16
	for {
		if len(rest) < 2 {
			return nil, errors.New("load option: description has no terminating NUL")
		}
		c := binary.LittleEndian.Uint16(rest)
		rest = rest[2:]
		if c == 0 {
			break
		}
		desc = append(desc, c)
	}
	o.Description = string(utf16.Decode(desc))
	if pathLen > len(rest) {
		return nil, fmt.Errorf("load option: device path of %d bytes, only %d left", pathLen, len(rest))
	}
	o.FilePath = append([]byte(nil), rest[:pathLen]...)
	o.Optional = append([]byte(nil), rest[pathLen:]...)
	return o, nil
}

func ucs2(s string) []byte {
	var b []byte
	for _, c := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return binary.LittleEndian.AppendUint16(b, 0)
}

// Partition locates a GPT partition for a device path: its number (from
// 1), first sector and size in 512-byte sectors, and its unique partition
// GUID.
type Partition struct {
	Number uint32          `json:"number"`
	Start  uint64          `json:"start"`
	Size   uint64          `json:"size"`
	GUID   secureboot.GUID `json:"-"`
	Device string          `json:"device,omitempty"`
}

// FileOnPartition is the device path of a file on a GPT partition:
// HD(number,GPT,guid,start,size)/\path\to\file.efi. file is relative to the
// partition's root, with / or \ separators. The firmware finds the
// partition by its GUID on whichever disk holds it.
func FileOnPartition(p Partition, file string) []byte {
	hd := []byte{0x04, 0x01, 42, 0}
	hd = binary.LittleEndian.AppendUint32(hd, p.Number)
	hd = binary.LittleEndian.AppendUint64(hd, p.Start)
	hd = binary.LittleEndian.AppendUint64(hd, p.Size)
	hd = append(hd, p.GUID[:]...)
	hd = append(hd, 0x02, 0x02) // GPT partition table, GUID signature
	path := ucs2(`\` + strings.TrimLeft(strings.ReplaceAll(file, "/", `\`), `\`))
	fp := []byte{0x04, 0x04}
	fp = binary.LittleEndian.AppendUint16(fp, uint16(4+len(path)))
	fp = append(fp, path...)
	out := append(hd, fp...)
	return append(out, 0x7f, 0xff, 0x04, 0x00)
}

// DescribePath renders a device path list for messages:
// HD(1,GPT,guid)/\EFI\vessel\x.efi; nodes it does not know are shown by
// type and subtype.
func DescribePath(dp []byte) string {
	var parts []string
	for len(dp) >= 4 {
		typ, sub, n := dp[0], dp[1], int(binary.LittleEndian.Uint16(dp[2:]))
		if n < 4 || n > len(dp) {
			parts = append(parts, "(malformed)")
			break
		}
		node := dp[4:n]
		switch {
		case typ == 0x7f && sub == 0xff:
			return strings.Join(parts, "/")
		case typ == 0x04 && sub == 0x01 && len(node) == 38:
			var g secureboot.GUID
			copy(g[:], node[20:36])
			parts = append(parts, fmt.Sprintf("HD(%d,GPT,%s)", binary.LittleEndian.Uint32(node), g))
		case typ == 0x04 && sub == 0x04:
			var u []uint16
			for i := 0; i+1 < len(node); i += 2 {
				if c := binary.LittleEndian.Uint16(node[i:]); c != 0 {
					u = append(u, c)
				}
			}
			parts = append(parts, string(utf16.Decode(u)))
		default:
			parts = append(parts, fmt.Sprintf("(%d,%d)", typ, sub))
		}
		dp = dp[n:]
	}
	return strings.Join(parts, "/")
}
