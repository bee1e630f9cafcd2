// Package pe edits PE32+ images the way a UKI needs: it appends data
// sections to an EFI stub (the systemd-boot stub), replaces one section's
// content, and recomputes the header fields that depend on them. It does not
// sign: internal/boot/uki signs the result (Authenticode).
//
// The rules followed (those of systemd's ukify, checked against the 252 stub,
// which has SectionAlignment = FileAlignment = 0x200 and a COFF symbol table):
// new sections go page-aligned (0x1000) after the last section's virtual end,
// their raw data at the file-aligned end of the image; the COFF symbol table
// (meaningless in an image) is dropped; SizeOfImage, SizeOfInitializedData
// and the checksum are recomputed; a signed input is refused.
package pe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Characteristics of sections the UKI adds: initialized data, readable.
const DataSection = 0x40000040

// PageAlign is the virtual alignment of added sections.
const PageAlign = 0x1000

const sectionHeaderSize = 40

// ErrNotPE means the input is not a PE32+ image.
var ErrNotPE = errors.New("not a PE32+ (EFI) image")

// Section is one section header.
type Section struct {
	Name             string `json:"name"`
	VirtualSize      uint32 `json:"virtualSize"`
	VirtualAddress   uint32 `json:"vma"`
	SizeOfRawData    uint32 `json:"rawSize"`
	PointerToRawData uint32 `json:"fileOffset"`
	Characteristics  uint32 `json:"characteristics"`
}

// File is a parsed PE32+ image held in memory.
type File struct {
	data     []byte
	coff     int // offset of the COFF file header
	opt      int // offset of the optional header
	table    int // offset of the section table
	Sections []Section
}

func u16(b []byte, off int) uint16      { return binary.LittleEndian.Uint16(b[off:]) }
func u32(b []byte, off int) uint32      { return binary.LittleEndian.Uint32(b[off:]) }
func put16(b []byte, off int, v uint16) { binary.LittleEndian.PutUint16(b[off:], v) }
func put32(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }

// Optional header (PE32+) field offsets.
const (
	optSizeOfInitializedData = 8
	optSectionAlignment      = 32
	optFileAlignment         = 36
	optSizeOfImage           = 56
	optSizeOfHeaders         = 60
	optCheckSum              = 64
	optNumberOfRvaAndSizes   = 108
	optDataDirectory         = 112
	dirSecurity              = 4
)

// Parse reads a PE32+ image. The data is copied.
func Parse(data []byte) (*File, error) {
	b := bytes.Clone(data)
	if len(b) < 0x40 || b[0] != 'M' || b[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ header", ErrNotPE)
	}
	peOff := int(u32(b, 0x3c))
	if peOff < 0x40 || peOff+24 > len(b) || string(b[peOff:peOff+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature", ErrNotPE)
	}
	f := &File{data: b, coff: peOff + 4, opt: peOff + 24}
	nsec := int(u16(b, f.coff+2))
	optSize := int(u16(b, f.coff+16))
	if optSize < optDataDirectory || f.opt+optSize > len(b) || u16(b, f.opt) != 0x20b {
		return nil, fmt.Errorf("%w: optional header is not PE32+", ErrNotPE)
	}
	if n := int(u32(b, f.opt+optNumberOfRvaAndSizes)); n <= dirSecurity || optDataDirectory+8*n > optSize {
		return nil, fmt.Errorf("%w: %d data directories", ErrNotPE, n)
	}
	f.table = f.opt + optSize
	if f.table+nsec*sectionHeaderSize > len(b) {
		return nil, fmt.Errorf("%w: section table runs past the end of the file", ErrNotPE)
	}
	for i := 0; i < nsec; i++ {
		h := b[f.table+i*sectionHeaderSize:]
		s := Section{
			Name:             strings.TrimRight(string(h[:8]), "\x00"),
			VirtualSize:      u32(h, 8),
			VirtualAddress:   u32(h, 12),
			SizeOfRawData:    u32(h, 16),
			PointerToRawData: u32(h, 20),
			Characteristics:  u32(h, 36),
		}
		if uint64(s.PointerToRawData)+uint64(s.SizeOfRawData) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: section %q runs past the end of the file", ErrNotPE, s.Name)
		}
		f.Sections = append(f.Sections, s)
	}
	return f, nil
}

// Bytes returns the image.
func (f *File) Bytes() []byte { return f.data }

// SectionAlignment and FileAlignment of the image.
func (f *File) SectionAlignment() uint32 { return u32(f.data, f.opt+optSectionAlignment) }
func (f *File) FileAlignment() uint32    { return u32(f.data, f.opt+optFileAlignment) }

// Section returns the named section header, or nil.
func (f *File) Section(name string) *Section {
	for i := range f.Sections {
		if f.Sections[i].Name == name {
			return &f.Sections[i]
		}
	}
	return nil
}

// Content returns a section's content: its raw data cut to VirtualSize.
func (f *File) Content(s *Section) []byte {
	n := min(s.VirtualSize, s.SizeOfRawData)
	return f.data[s.PointerToRawData : s.PointerToRawData+n]
}

// SecurityDirectory returns the certificate table's file offset and size
// (zero if the image is not signed).
func (f *File) SecurityDirectory() (off, size uint32) {
	d := f.opt + optDataDirectory + 8*dirSecurity
	return u32(f.data, d), u32(f.data, d+4)
}

// NewSection is a section to add.
type NewSection struct {
	Name string
	Data []byte
}

func align(v, a uint32) uint32 { return (v + a - 1) / a * a }

// AddSections appends sections. A name that already exists is an error,
// except for names in replace: for those the existing section's content is
// replaced in place when the new content fits its raw size and the virtual
// room before the next section; otherwise the existing header is renamed
// (oldName) and the new section appended, so that only one section carries
// the name.
func (f *File) AddSections(secs []NewSection, replace map[string]string) error {
	b := f.data
	if off, size := f.SecurityDirectory(); off != 0 || size != 0 {
		return errors.New("the stub is already signed (it has a certificate table); use the unsigned stub")
	}
	fileAlign := f.FileAlignment()
	if fileAlign == 0 || f.SectionAlignment() == 0 {
		return fmt.Errorf("%w: zero alignment", ErrNotPE)
	}
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, "/") {
			return fmt.Errorf("section name %q refers to the COFF string table, which is dropped", s.Name)
		}
	}
	// Drop the COFF symbol and string tables: they follow the last
	// section's raw data and an image needs neither.
	var rawEnd uint32
	for _, s := range f.Sections {
		rawEnd = max(rawEnd, s.PointerToRawData+s.SizeOfRawData)
	}
	if sym := u32(b, f.coff+8); sym != 0 {
		if sym < rawEnd {
			return fmt.Errorf("the COFF symbol table (at %#x) is not after the sections (end %#x)", sym, rawEnd)
		}
		put32(b, f.coff+8, 0)
		put32(b, f.coff+12, 0)
		put16(b, f.coff+18, u16(b, f.coff+18)|0x0008) // IMAGE_FILE_LOCAL_SYMS_STRIPPED
	}
	b = b[:rawEnd]
	grow := 0
	for _, ns := range secs {
		grow += len(ns.Data) + 2*int(fileAlign)
	}
	b = slices.Grow(b, grow) // one allocation for the whole image

	for _, ns := range secs {
		if len(ns.Name) == 0 || len(ns.Name) > 8 {
			return fmt.Errorf("section name %q: want 1 to 8 bytes", ns.Name)
		}
		if len(ns.Data) == 0 {
			return fmt.Errorf("section %s: empty content", ns.Name)
		}
		if uint64(len(ns.Data)) > 1<<31 {
			return fmt.Errorf("section %s: %d bytes is too large", ns.Name, len(ns.Data))
		}
		size := uint32(len(ns.Data))
		if idx := f.index(ns.Name); idx >= 0 {
			oldName, ok := replace[ns.Name]
			if !ok {
				return fmt.Errorf("the stub already has a %s section (is it a UKI already?)", ns.Name)
			}
			old := &f.Sections[idx]
			room := old.SizeOfRawData
			for _, o := range f.Sections {
				if o.VirtualAddress > old.VirtualAddress {
					room = min(room, o.VirtualAddress-old.VirtualAddress)
				}
			}
			if size <= room {
				copy(b[old.PointerToRawData:old.PointerToRawData+old.SizeOfRawData], make([]byte, old.SizeOfRawData))
				copy(b[old.PointerToRawData:], ns.Data)
				old.VirtualSize = size
				f.writeHeader(b, idx)
				continue
			}
			old.Name = oldName
			f.writeHeader(b, idx)
		}
		var vend uint32
		for _, s := range f.Sections {
			vend = max(vend, s.VirtualAddress+max(s.VirtualSize, s.SizeOfRawData))
		}
		hdrEnd := f.table + (len(f.Sections)+1)*sectionHeaderSize
		firstRaw := uint32(len(b))
		for _, s := range f.Sections {
			if s.SizeOfRawData > 0 {
				firstRaw = min(firstRaw, s.PointerToRawData)
			}
		}
		if uint32(hdrEnd) > u32(b, f.opt+optSizeOfHeaders) || uint32(hdrEnd) > firstRaw {
			return fmt.Errorf("no room in the PE headers for section %s (headers end at %#x, SizeOfHeaders %#x, first section data at %#x)",
				ns.Name, hdrEnd, u32(b, f.opt+optSizeOfHeaders), firstRaw)
		}
		s := Section{
			Name:             ns.Name,
			VirtualSize:      size,
			VirtualAddress:   align(vend, PageAlign),
			SizeOfRawData:    align(size, fileAlign),
			PointerToRawData: align(uint32(len(b)), fileAlign),
			Characteristics:  DataSection,
		}
		if uint64(s.VirtualAddress)+uint64(s.SizeOfRawData) > 1<<32-1 || uint64(s.PointerToRawData)+uint64(s.SizeOfRawData) > 1<<32-1 {
			return fmt.Errorf("section %s: image larger than 4 GiB", ns.Name)
		}
		b = append(b, make([]byte, s.PointerToRawData-uint32(len(b)))...)
		b = append(b, ns.Data...)
		b = append(b, make([]byte, s.SizeOfRawData-size)...)
		f.Sections = append(f.Sections, s)
		f.writeHeader(b, len(f.Sections)-1)
		put16(b, f.coff+2, uint16(len(f.Sections)))
		put32(b, f.opt+optSizeOfInitializedData, u32(b, f.opt+optSizeOfInitializedData)+s.SizeOfRawData)
	}
	var vend uint32
	for _, s := range f.Sections {
		vend = max(vend, s.VirtualAddress+s.VirtualSize)
	}
	put32(b, f.opt+optSizeOfImage, align(vend, f.SectionAlignment()))
	f.data = b
	f.UpdateChecksum()
	return nil
}

func (f *File) index(name string) int {
	for i, s := range f.Sections {
		if s.Name == name {
			return i
		}
	}
	return -1
}

func (f *File) writeHeader(b []byte, i int) {
	s := f.Sections[i]
	h := b[f.table+i*sectionHeaderSize : f.table+(i+1)*sectionHeaderSize]
	var name [8]byte
	copy(name[:], s.Name)
	copy(h[:8], name[:])
	put32(h, 8, s.VirtualSize)
	put32(h, 12, s.VirtualAddress)
	put32(h, 16, s.SizeOfRawData)
	put32(h, 20, s.PointerToRawData)
	put32(h, 36, s.Characteristics)
}

// Checksum computes the PE image checksum (the CheckSum field counts as
// zero), over the whole file including any certificate table.
func Checksum(b []byte, checksumOff int) uint32 {
	var sum uint64
	for i := 0; i+1 < len(b); i += 2 {
		if i == checksumOff || i == checksumOff+2 {
			continue
		}
		sum += uint64(binary.LittleEndian.Uint16(b[i:]))
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(b)%2 == 1 {
		sum += uint64(b[len(b)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(len(b))
}

// ChecksumOffset is the file offset of the CheckSum field.
func (f *File) ChecksumOffset() int { return f.opt + optCheckSum }

// UpdateChecksum recomputes the CheckSum field.
func (f *File) UpdateChecksum() {
	put32(f.data, f.opt+optCheckSum, Checksum(f.data, f.opt+optCheckSum))
}

// StoredChecksum returns the CheckSum field.
func (f *File) StoredChecksum() uint32 { return u32(f.data, f.opt+optCheckSum) }

// FixChecksum recomputes the CheckSum field of a PE image in place (after
// signing: the checksum is not covered by the Authenticode digest).
func FixChecksum(b []byte) error {
	f, err := Parse(b)
	if err != nil {
		return err
	}
	put32(b, f.opt+optCheckSum, Checksum(b, f.opt+optCheckSum))
	return nil
}
