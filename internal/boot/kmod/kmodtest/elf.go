// Package kmodtest writes minimal ELF files for tests: relocatable objects
// with a .modinfo section (fake kernel modules) and static executables.
package kmodtest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// Module returns an ELF64 relocatable object whose .modinfo section holds
// the given key=value strings, like a kernel module's.
func Module(modinfo ...string) []byte {
	var info bytes.Buffer
	for _, kv := range modinfo {
		info.WriteString(kv)
		info.WriteByte(0)
	}
	return build(elf.ET_REL, info.Bytes())
}

// Executable returns a static ELF64 executable (no program interpreter).
func Executable() []byte { return build(elf.ET_EXEC, nil) }

// build lays out: ELF header, .modinfo data, .shstrtab, section headers
// (null, .modinfo, .shstrtab).
func build(typ elf.Type, modinfo []byte) []byte {
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(modinfo))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	le := binary.LittleEndian
	ident := [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)}
	b.Write(ident[:])
	binary.Write(&b, le, uint16(typ))
	binary.Write(&b, le, uint16(elf.EM_X86_64))
	binary.Write(&b, le, uint32(elf.EV_CURRENT))
	binary.Write(&b, le, uint64(0)) // entry
	binary.Write(&b, le, uint64(0)) // phoff
	binary.Write(&b, le, shOff)
	binary.Write(&b, le, uint32(0)) // flags
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(56)) // phentsize
	binary.Write(&b, le, uint16(0))  // phnum
	binary.Write(&b, le, uint16(shentsize))
	binary.Write(&b, le, uint16(3)) // shnum
	binary.Write(&b, le, uint16(2)) // shstrndx
	b.Write(modinfo)
	b.Write(shstr)
	for uint64(b.Len()) < shOff {
		b.WriteByte(0)
	}
	sh := func(name uint32, typ elf.SectionType, off, size uint64) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, uint32(typ))
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, off)
		binary.Write(&b, le, size)
		binary.Write(&b, le, uint32(0)) // link
		binary.Write(&b, le, uint32(0)) // info
		binary.Write(&b, le, uint64(1)) // align
		binary.Write(&b, le, uint64(0)) // entsize
	}
	sh(0, elf.SHT_NULL, 0, 0)
	sh(1, elf.SHT_PROGBITS, infoOff, uint64(len(modinfo)))
	sh(10, elf.SHT_STRTAB, strOff, uint64(len(shstr)))
	return b.Bytes()
}
