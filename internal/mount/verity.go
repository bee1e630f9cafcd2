package mount

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/vesselos/vessel/internal/verity"
)

// Verity is a dm-verity device over one layer blob: data and hash tree are
// read from the same loop device, the tree starting right after the
// filesystem image (after the veritysetup superblock).
type Verity struct {
	Name          string `json:"name"`
	DataBlocks    uint64 `json:"dataBlocks"`
	DataBlockSize uint32 `json:"dataBlockSize"`
	HashBlockSize uint32 `json:"hashBlockSize"`
	HashStart     uint64 `json:"hashStartBlock"` // in hash blocks from the device start
	Algorithm     string `json:"algorithm"`
	Root          string `json:"root"`
	Salt          string `json:"salt"`
}

func newVerity(l imageLayer) *Verity {
	p := l.geometry.Params
	hbs := int64(p.HashBlockSize)
	treeStart := (p.HashOffset + verity.SuperblockSize + hbs - 1) / hbs * hbs
	salt := "-"
	if len(p.Salt) > 0 {
		salt = hex.EncodeToString(p.Salt)
	}
	alg := p.HashAlg
	if alg == "" {
		alg = "sha256"
	}
	return &Verity{
		Name:          "vessel-" + l.hex()[:32],
		DataBlocks:    p.DataBlocks,
		DataBlockSize: p.DataBlockSize,
		HashBlockSize: p.HashBlockSize,
		HashStart:     uint64(treeStart / hbs),
		Algorithm:     alg,
		Root:          hex.EncodeToString(l.geometry.Root),
		Salt:          salt,
	}
}

// Sectors is the size of the verity device in 512-byte sectors.
func (v *Verity) Sectors() uint64 { return v.DataBlocks * uint64(v.DataBlockSize) / 512 }

// Table is the device-mapper table line for the device (as `dmsetup create
// --table` takes it), with dev as both data and hash device. A corrupted
// block gives I/O errors (the kernel default); nothing else is optional.
func (v *Verity) Table(dev string) string {
	return fmt.Sprintf("0 %d verity 1 %s %s %d %d %d %d %s %s %s",
		v.Sectors(), dev, dev, v.DataBlockSize, v.HashBlockSize, v.DataBlocks, v.HashStart, v.Algorithm, v.Root, v.Salt)
}

// ParseTable reads a verity table line back (the format `dmsetup table`
// prints). It returns the device and the parameters, and is the inverse of
// Table for the tables vessel writes.
func ParseTable(line string) (dev string, v Verity, err error) {
	f := strings.Fields(line)
	if len(f) < 13 {
		return "", v, fmt.Errorf("verity table has %d fields, want at least 13: %q", len(f), line)
	}
	if f[0] != "0" || f[2] != "verity" || f[3] != "1" {
		return "", v, fmt.Errorf("not a version 1 verity table starting at sector 0: %q", line)
	}
	var sectors uint64
	if _, err := fmt.Sscan(f[1], &sectors); err != nil {
		return "", v, fmt.Errorf("verity table length %q: %w", f[1], err)
	}
	if f[4] != f[5] {
		return "", v, fmt.Errorf("verity table uses data device %s and hash device %s; vessel keeps both in one blob", f[4], f[5])
	}
	if _, err := fmt.Sscan(strings.Join(f[6:10], " "), &v.DataBlockSize, &v.HashBlockSize, &v.DataBlocks, &v.HashStart); err != nil {
		return "", v, fmt.Errorf("verity table numbers %q: %w", strings.Join(f[6:10], " "), err)
	}
	v.Algorithm, v.Root, v.Salt = f[10], f[11], f[12]
	if v.Sectors() != sectors {
		return "", v, fmt.Errorf("verity table length %d sectors disagrees with %d blocks of %d bytes", sectors, v.DataBlocks, v.DataBlockSize)
	}
	return f[4], v, nil
}
