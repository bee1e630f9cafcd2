// Package layer turns a directory into a verified layer blob and checks one.
//
// A layer blob is a read-only filesystem image (squashfs by default, erofs
// as an option), zero-padded to 4096 bytes, followed by its dm-verity hash
// tree (sha256, 4096-byte blocks) whose superblock sits at the start of the
// hash area. The tree's root hash travels as an annotation on the layer's
// descriptor in the image manifest, as stacker and atomfs do, so their tools
// can consume vessel images and the other way round.
//
// The blob is reproducible: the same tree and SOURCE_DATE_EPOCH give the
// same bytes, because file times are clamped, the filesystem's own time and
// UUID are fixed, and the verity salt is derived from the filesystem image.
//
// Callers that want images (several layers, a config, a tag) use package
// image; this package knows one layer at a time.
package layer

import (
	"fmt"
	"strings"
)

// BlockSize is the data and hash block size of every vessel layer.
const BlockSize = 4096

// Type is a layer's filesystem type.
type Type string

const (
	Squashfs Type = "squashfs"
	Erofs    Type = "erofs"
)

// Format is a filesystem type and its compression.
type Format struct {
	Type        Type
	Compression string // squashfs: zstd (default), gzip, xz; erofs: "" (none), lz4, lz4hc
}

// ParseType parses a --type value.
func ParseType(s string) (Type, error) {
	switch Type(s) {
	case Squashfs, Erofs:
		return Type(s), nil
	}
	return "", fmt.Errorf("layer type %q: must be squashfs or erofs", s)
}

// DefaultFormat is the format for a type when the user names no compression.
func DefaultFormat(t Type) Format {
	if t == Erofs {
		return Format{Type: Erofs, Compression: "lz4hc"}
	}
	return Format{Type: Squashfs, Compression: "zstd"}
}

const (
	mediaTypeSquashfs = "application/vnd.stacker.image.layer.squashfs"
	mediaTypeErofs    = "application/vnd.stacker.image.layer.erofs"
)

// MediaType is the stacker-compatible media type of a layer in format f.
func (f Format) MediaType() string {
	base := mediaTypeSquashfs
	if f.Type == Erofs {
		base = mediaTypeErofs
	}
	if f.Compression == "" {
		return base
	}
	return base + "+" + f.Compression
}

// ParseMediaType returns the format of a layer media type, or an error for
// anything that is not a filesystem-image layer (such as a tar layer).
func ParseMediaType(mt string) (Format, error) {
	mt = strings.TrimSuffix(mt, "+verity") // older stacker marked verity in the type
	for _, c := range []struct {
		base string
		t    Type
	}{{mediaTypeSquashfs, Squashfs}, {mediaTypeErofs, Erofs}} {
		if mt == c.base {
			return Format{Type: c.t}, nil
		}
		if rest, ok := strings.CutPrefix(mt, c.base+"+"); ok && !strings.Contains(rest, "+") {
			return Format{Type: c.t, Compression: rest}, nil
		}
	}
	return Format{}, fmt.Errorf("media type %q is not a squashfs or erofs layer", mt)
}
