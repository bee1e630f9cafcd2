package layer

import (
	"encoding/hex"
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// This file owns the verity root hash of a layer: the annotation names and
// what a valid value is. Every package that reads or checks a root hash
// (image, manifest, mount) asks here.

// Annotations carrying a layer's verity root hash. Vessel writes the first;
// readers also accept the older stacker name.
const (
	AnnotationVerityRoot    = "io.stackeroci.stacker.atomfs_verity_root_hash"
	AnnotationVerityRootOld = "io.stackeroci.stacker.squashfs_verity_root_hash"
)

// RootHashSize is the size of a layer's verity root hash: layers use sha256
// trees only, so a root hash is 32 bytes, 64 hex digits.
const RootHashSize = 32

var (
	// ErrNoVerity means a layer descriptor carries no verity root hash.
	ErrNoVerity = errors.New("layer has no verity root hash annotation")
	// ErrBadRootHash means a verity root hash annotation is not 64
	// lower-case hex digits.
	ErrBadRootHash = errors.New("bad verity root hash")
)

// RootHash returns the verity root hash annotation of a layer descriptor as
// written, unchecked, for display: the current annotation if present, else
// the old stacker one. Code that trusts the value uses VerityRoot.
func RootHash(d ocispec.Descriptor) (string, bool) {
	_, v, ok := rootHashAnnotation(d)
	return v, ok
}

func rootHashAnnotation(d ocispec.Descriptor) (key, value string, ok bool) {
	if v, ok := d.Annotations[AnnotationVerityRoot]; ok {
		return AnnotationVerityRoot, v, true
	}
	v, ok := d.Annotations[AnnotationVerityRootOld]
	return AnnotationVerityRootOld, v, ok
}

// ParseRootHash checks a verity root hash as an annotation carries it and
// returns its bytes. It must be exactly 64 lower-case hex digits, the form
// vessel, stacker and veritysetup write; upper case is refused so that one
// root hash has one spelling (it names dm-verity devices and cache entries).
func ParseRootHash(s string) ([]byte, error) {
	if len(s) != 2*RootHashSize {
		return nil, fmt.Errorf("%w: %q is %d characters, want %d lower-case hex digits (a sha256 root hash)", ErrBadRootHash, short(s), len(s), 2*RootHashSize)
	}
	for i, c := range s {
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			return nil, fmt.Errorf("%w: %q has upper-case hex digits: write it in lower case", ErrBadRootHash, s)
		default:
			return nil, fmt.Errorf("%w: %q has %q at offset %d, which is not a hex digit", ErrBadRootHash, s, c, i)
		}
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrBadRootHash, s, err)
	}
	return b, nil
}

// VerityRoot returns the checked verity root hash of a layer descriptor.
// Errors name the layer's digest and the annotation, and wrap ErrNoVerity
// (no annotation) or ErrBadRootHash (malformed).
func VerityRoot(d ocispec.Descriptor) ([]byte, error) {
	key, v, ok := rootHashAnnotation(d)
	if !ok {
		return nil, fmt.Errorf("layer %s: %w (%s)", d.Digest, ErrNoVerity, AnnotationVerityRoot)
	}
	b, err := ParseRootHash(v)
	if err != nil {
		return nil, fmt.Errorf("layer %s: annotation %s: %w", d.Digest, key, err)
	}
	return b, nil
}

// short keeps an error readable when an annotation is huge.
func short(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
