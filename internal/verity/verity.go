// Package verity builds and checks dm-verity hash trees (format version 1,
// hash type 1) in pure Go, byte-compatible with cryptsetup's veritysetup.
//
// A layer blob in Vessel is a filesystem image followed by its hash tree;
// the tree's root hash is what the signed image manifest pins. Format writes
// the superblock and the tree and returns the root hash; Verify checks every
// data and hash block against a root hash in userspace, for machines without
// device-mapper. Callers that mount layers should go through internal/layer,
// which pairs an image with its tree; this package knows only blocks.
//
// Layout (as veritysetup writes it): a 512-byte superblock at Params.HashOffset,
// then, starting at the next hash-block boundary, the tree levels top level
// first. Every block is hashed as H(salt || block).
package verity

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"math/bits"
)

// SuperblockSize is the size of the on-disk superblock.
const SuperblockSize = 512

// maxLevels is veritysetup's limit on tree height (VERITY_MAX_LEVELS).
const maxLevels = 63

// ErrRootMismatch means the tree does not hash to the expected root: either
// the root hash is wrong or the top hash block is corrupted.
var ErrRootMismatch = errors.New("verity: root hash mismatch")

// Params describes a hash tree. The zero values of HashAlg, DataBlockSize
// and HashBlockSize mean sha256 and 4096 bytes, as in veritysetup.
type Params struct {
	HashAlg       string // "sha256" (default), "sha1" or "sha512"
	DataBlockSize uint32 // power of two, 512..65536
	HashBlockSize uint32 // power of two, 512..65536
	DataBlocks    uint64 // number of data blocks covered, from offset 0 of the data
	Salt          []byte // at most 256 bytes, prepended to every block before hashing
	UUID          [16]byte
	HashOffset    int64 // where the superblock starts in the hash file; multiple of 512
}

// withDefaults fills the zero fields with veritysetup's defaults.
func (p Params) withDefaults() Params {
	if p.HashAlg == "" {
		p.HashAlg = "sha256"
	}
	if p.DataBlockSize == 0 {
		p.DataBlockSize = 4096
	}
	if p.HashBlockSize == 0 {
		p.HashBlockSize = 4096
	}
	return p
}

// newHash returns the constructor and digest size of a supported algorithm.
func newHash(alg string) (func() hash.Hash, int, error) {
	switch alg {
	case "sha256":
		return sha256.New, sha256.Size, nil
	case "sha1":
		return sha1.New, sha1.Size, nil
	case "sha512":
		return sha512.New, sha512.Size, nil
	}
	return nil, 0, fmt.Errorf("verity: unsupported hash algorithm %q (want sha256, sha1 or sha512)", alg)
}

func validBlockSize(n uint32) bool {
	return n >= 512 && n <= 65536 && n&(n-1) == 0
}

// geometry is the tree layout derived from Params.
type geometry struct {
	p          Params
	newHash    func() hash.Hash
	digestSize int     // bytes of a digest
	entrySize  int     // digest padded to a power of two (format version 1)
	perBlock   int     // entries per hash block, a power of two
	levels     int     // 0 when there is a single data block
	levelSize  []int64 // hash blocks per level, level 0 = lowest
	levelStart []int64 // absolute hash-file block index of each level's first block
	treeStart  int64   // absolute byte offset of the first tree block
	treeBlocks int64   // hash blocks in the tree
}

func newGeometry(p Params) (*geometry, error) {
	p = p.withDefaults()
	nh, ds, err := newHash(p.HashAlg)
	if err != nil {
		return nil, err
	}
	if !validBlockSize(p.DataBlockSize) {
		return nil, fmt.Errorf("verity: data block size %d is not a power of two in 512..65536", p.DataBlockSize)
	}
	if !validBlockSize(p.HashBlockSize) {
		return nil, fmt.Errorf("verity: hash block size %d is not a power of two in 512..65536", p.HashBlockSize)
	}
	if len(p.Salt) > 256 {
		return nil, fmt.Errorf("verity: salt is %d bytes, at most 256 allowed", len(p.Salt))
	}
	if p.DataBlocks == 0 {
		return nil, errors.New("verity: no data blocks")
	}
	if p.DataBlocks > uint64(1<<62)/uint64(p.DataBlockSize) {
		return nil, fmt.Errorf("verity: %d data blocks is too large", p.DataBlocks)
	}
	if p.HashOffset < 0 || p.HashOffset%512 != 0 {
		return nil, fmt.Errorf("verity: hash offset %d is not a non-negative multiple of 512", p.HashOffset)
	}
	g := &geometry{p: p, newHash: nh, digestSize: ds}
	g.entrySize = 1 << bits.Len(uint(ds-1))
	perBlockBits := bits.Len(uint(int(p.HashBlockSize)/g.entrySize)) - 1
	g.perBlock = 1 << perBlockBits
	if g.perBlock < 2 {
		return nil, fmt.Errorf("verity: hash block size %d holds fewer than two %s digests", p.HashBlockSize, p.HashAlg)
	}
	for g.levels*perBlockBits < 64 && (p.DataBlocks-1)>>(uint(g.levels*perBlockBits)) != 0 {
		g.levels++
	}
	if g.levels > maxLevels {
		return nil, fmt.Errorf("verity: tree of %d levels is too high", g.levels)
	}
	hbs := int64(p.HashBlockSize)
	g.treeStart = (p.HashOffset + SuperblockSize + hbs - 1) / hbs * hbs
	g.levelSize = make([]int64, g.levels)
	g.levelStart = make([]int64, g.levels)
	pos := g.treeStart / hbs
	for i := g.levels - 1; i >= 0; i-- {
		shift := uint((i + 1) * perBlockBits)
		var s uint64
		if shift >= 64 {
			s = 1
		} else {
			s = (p.DataBlocks-1)>>shift + 1
		}
		g.levelSize[i] = int64(s)
		g.levelStart[i] = pos
		pos += int64(s)
		g.treeBlocks += int64(s)
	}
	if pos > (1<<62)/hbs {
		return nil, errors.New("verity: hash area too large")
	}
	return g, nil
}

// end is the byte offset just past the tree in the hash file.
func (g *geometry) end() int64 {
	return g.treeStart + g.treeBlocks*int64(g.p.HashBlockSize)
}

// TreeSize returns the bytes the superblock and tree occupy from p.HashOffset
// (including padding up to the first hash block), or -1 if p is invalid.
// A hash file must be at least p.HashOffset+TreeSize(p) bytes long.
func TreeSize(p Params) int64 {
	g, err := newGeometry(p)
	if err != nil {
		return -1
	}
	return g.end() - g.p.HashOffset
}

// CorruptionError reports a block whose contents do not match the tree.
// Match it with errors.As.
type CorruptionError struct {
	Area   string // "data" or "hash"
	Block  uint64 // block index in its file (data blocks from 0, hash blocks from the start of the hash file)
	Offset int64  // byte offset of the block in its file
	Level  int    // tree level of a hash block (0 = lowest); -1 for data
	Reason string // what did not match
}

func (e *CorruptionError) Error() string {
	if e.Area == "data" {
		return fmt.Sprintf("verity: data block %d (offset %d) is corrupted", e.Block, e.Offset)
	}
	return fmt.Sprintf("verity: hash block %d (level %d, offset %d) is corrupted: %s", e.Block, e.Level, e.Offset, e.Reason)
}
