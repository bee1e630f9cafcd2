package verity

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Superblock field offsets (struct verity_sb in cryptsetup's lib/verity/verity.c).
const (
	sbMagic         = 0   // [8]byte "verity\0\0"
	sbVersion       = 8   // u32
	sbHashType      = 12  // u32
	sbUUID          = 16  // [16]byte
	sbAlgorithm     = 32  // [32]byte, NUL-padded
	sbDataBlockSize = 64  // u32
	sbHashBlockSize = 68  // u32
	sbDataBlocks    = 72  // u64
	sbSaltSize      = 80  // u16, then 6 bytes of padding
	sbSalt          = 88  // [256]byte, then 168 bytes of padding
	sbSaltMax       = 256 // bytes
)

var magic = []byte("verity\x00\x00")

// MarshalSuperblock returns the 512-byte on-disk superblock for p
// (little endian, version 1, hash type 1).
func (p Params) MarshalSuperblock() []byte {
	p = p.withDefaults()
	b := make([]byte, SuperblockSize)
	le := binary.LittleEndian
	copy(b[sbMagic:], magic)
	le.PutUint32(b[sbVersion:], 1)
	le.PutUint32(b[sbHashType:], 1)
	copy(b[sbUUID:sbUUID+16], p.UUID[:])
	copy(b[sbAlgorithm:sbAlgorithm+31], p.HashAlg)
	le.PutUint32(b[sbDataBlockSize:], p.DataBlockSize)
	le.PutUint32(b[sbHashBlockSize:], p.HashBlockSize)
	le.PutUint64(b[sbDataBlocks:], p.DataBlocks)
	le.PutUint16(b[sbSaltSize:], uint16(len(p.Salt)))
	copy(b[sbSalt:sbSalt+sbSaltMax], p.Salt)
	return b
}

// UnmarshalSuperblock parses a 512-byte superblock strictly: magic, version 1,
// hash type 1, power-of-two block sizes, a known algorithm, a salt of at most
// 256 bytes and a tree that fits the format. The returned Params has
// HashOffset 0.
func UnmarshalSuperblock(b []byte) (Params, error) {
	if len(b) < SuperblockSize {
		return Params{}, fmt.Errorf("verity: superblock is %d bytes, want %d", len(b), SuperblockSize)
	}
	le := binary.LittleEndian
	if !bytes.Equal(b[sbMagic:sbMagic+8], magic) {
		return Params{}, errors.New("verity: no verity superblock (bad magic)")
	}
	if v := le.Uint32(b[sbVersion:]); v != 1 {
		return Params{}, fmt.Errorf("verity: unsupported superblock version %d (want 1)", v)
	}
	if t := le.Uint32(b[sbHashType:]); t != 1 {
		return Params{}, fmt.Errorf("verity: unsupported hash type %d (want 1)", t)
	}
	alg := b[sbAlgorithm : sbAlgorithm+32]
	n := bytes.IndexByte(alg, 0)
	if n < 0 {
		return Params{}, errors.New("verity: hash algorithm name is not NUL-terminated")
	}
	var p Params
	p.HashAlg = string(alg[:n])
	if _, _, err := newHash(p.HashAlg); err != nil {
		return Params{}, err
	}
	if !allZero(alg[n:]) {
		return Params{}, errors.New("verity: garbage after the hash algorithm name")
	}
	copy(p.UUID[:], b[sbUUID:sbUUID+16])
	p.DataBlockSize = le.Uint32(b[sbDataBlockSize:])
	p.HashBlockSize = le.Uint32(b[sbHashBlockSize:])
	p.DataBlocks = le.Uint64(b[sbDataBlocks:])
	if p.DataBlockSize == 0 || p.HashBlockSize == 0 {
		return Params{}, errors.New("verity: block size is zero")
	}
	saltSize := int(le.Uint16(b[sbSaltSize:]))
	if saltSize > sbSaltMax {
		return Params{}, fmt.Errorf("verity: salt size %d exceeds %d", saltSize, sbSaltMax)
	}
	p.Salt = bytes.Clone(b[sbSalt : sbSalt+saltSize])
	if _, err := newGeometry(p); err != nil {
		return Params{}, err
	}
	return p, nil
}

// ReadSuperblock reads and parses the superblock at off in r. When r can
// report its size (an *os.File, or anything with Size() int64) it also
// checks that the whole tree fits in it.
func ReadSuperblock(r io.ReaderAt, off int64) (Params, error) {
	b := make([]byte, SuperblockSize)
	if _, err := r.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Params{}, fmt.Errorf("verity: read superblock at offset %d: %w", off, err)
	}
	p, err := UnmarshalSuperblock(b)
	if err != nil {
		return Params{}, err
	}
	p.HashOffset = off
	g, err := newGeometry(p)
	if err != nil {
		return Params{}, err
	}
	if size, ok := sizeOf(r); ok && size < g.end() {
		return Params{}, fmt.Errorf("verity: hash area truncated: %d data blocks need %d bytes of hash file, have %d: %w",
			p.DataBlocks, g.end(), size, io.ErrUnexpectedEOF)
	}
	return p, nil
}

// sizeOf returns the size of r if it can tell.
func sizeOf(r io.ReaderAt) (int64, bool) {
	switch r := r.(type) {
	case interface{ Size() int64 }:
		return r.Size(), true
	case *os.File:
		fi, err := r.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			return 0, false
		}
		return fi.Size(), true
	}
	return 0, false
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
