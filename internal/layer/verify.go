package layer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/verity"
)

// Geometry locates the verity tree of a layer blob.
type Geometry struct {
	Format   Format
	DataSize int64         // bytes of (padded) filesystem image; the hash area starts here
	Params   verity.Params // as read from the verity superblock
	Root     []byte        // from the descriptor's annotation
}

// Locate reads the filesystem superblock to find where the hash area starts,
// then the verity superblock there, and checks that they agree with each
// other and with the blob size. It does not verify content (see Verify).
func Locate(r io.ReaderAt, desc ocispec.Descriptor) (Geometry, error) {
	var g Geometry
	f, err := ParseMediaType(desc.MediaType)
	if err != nil {
		return g, err
	}
	g.Format = f
	if g.Root, err = VerityRoot(desc); err != nil {
		return g, err
	}
	fsSize, err := fsImageSize(r, f.Type)
	if err != nil {
		return g, err
	}
	g.DataSize = (fsSize + BlockSize - 1) / BlockSize * BlockSize
	if desc.Size > 0 && g.DataSize >= desc.Size {
		return g, fmt.Errorf("%s image claims %d bytes but the blob has %d: no room for a verity tree", f.Type, fsSize, desc.Size)
	}
	g.Params, err = verity.ReadSuperblock(r, g.DataSize)
	if err != nil {
		return g, fmt.Errorf("verity superblock at offset %d: %w", g.DataSize, err)
	}
	if g.Params.DataBlocks*uint64(g.Params.DataBlockSize) != uint64(g.DataSize) {
		return g, fmt.Errorf("verity superblock covers %d blocks of %d bytes but the %s image is %d bytes", g.Params.DataBlocks, g.Params.DataBlockSize, f.Type, g.DataSize)
	}
	if desc.Size > 0 {
		if end := g.DataSize + verity.TreeSize(g.Params); end != desc.Size {
			return g, fmt.Errorf("blob is %d bytes, but image and verity tree end at %d", desc.Size, end)
		}
	}
	return g, nil
}

// Verify checks every block of the layer blob against the root hash in its
// descriptor. A failure wraps *verity.CorruptionError or verity.ErrRootMismatch.
func Verify(r io.ReaderAt, desc ocispec.Descriptor) error {
	g, err := Locate(r, desc)
	if err != nil {
		return err
	}
	return verity.Verify(r, r, g.Params, g.Root)
}

// fsImageSize reads the size the filesystem image says it has.
func fsImageSize(r io.ReaderAt, t Type) (int64, error) {
	switch t {
	case Squashfs:
		var sb [96]byte
		if _, err := r.ReadAt(sb[:], 0); err != nil {
			return 0, fmt.Errorf("read squashfs superblock: %w", err)
		}
		if string(sb[0:4]) != "hsqs" {
			return 0, errors.New("not a squashfs image (bad magic)")
		}
		if major := binary.LittleEndian.Uint16(sb[28:]); major != 4 {
			return 0, fmt.Errorf("squashfs version %d is not supported", major)
		}
		n := int64(binary.LittleEndian.Uint64(sb[40:])) // bytes_used
		if n <= 0 || n > 1<<44 {
			return 0, fmt.Errorf("squashfs superblock says %d bytes used", n)
		}
		return n, nil
	case Erofs:
		var sb [128]byte
		if _, err := r.ReadAt(sb[:], 1024); err != nil {
			return 0, fmt.Errorf("read erofs superblock: %w", err)
		}
		if binary.LittleEndian.Uint32(sb[0:]) != 0xE0F5E1E2 {
			return 0, errors.New("not an erofs image (bad magic)")
		}
		blkbits := sb[12]
		if blkbits < 9 || blkbits > 16 {
			return 0, fmt.Errorf("erofs block size 2^%d is not supported", blkbits)
		}
		blocks := int64(binary.LittleEndian.Uint32(sb[36:]))
		if blocks == 0 {
			return 0, errors.New("erofs superblock says 0 blocks")
		}
		return blocks << blkbits, nil
	}
	return 0, fmt.Errorf("layer type %q: must be squashfs or erofs", t)
}
