package uki

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// CpioEntry is one record of a newc archive.
type CpioEntry struct {
	Name string
	Mode uint32
	Data []byte
}

// compression names the format of compressed data by its magic, or "".
func compression(b []byte) string {
	for _, m := range []struct {
		magic []byte
		name  string
	}{
		{[]byte{0x1f, 0x8b}, "gzip"}, {[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0}, "xz"}, {[]byte{0x02, 0x21, 0x4c, 0x18}, "lz4"},
		{[]byte("BZh"), "bzip2"}, {[]byte{0x5d, 0, 0}, "lzma"}, {[]byte{0x89, 'L', 'Z', 'O'}, "lzo"},
	} {
		if bytes.HasPrefix(b, m.magic) {
			return m.name
		}
	}
	return ""
}

// ReadCpio reads concatenated newc ("070701") archives, as the kernel
// unpacks an initramfs. It stops at a compressed member and returns its
// format in compressed and its offset in at (the entries before it are
// returned).
func ReadCpio(b []byte) (entries []CpioEntry, compressed string, at int, err error) {
	off := 0
	for {
		for off < len(b) && b[off] == 0 { // padding between archives
			off++
		}
		if off >= len(b) {
			return entries, "", 0, nil
		}
		if c := compression(b[off:]); c != "" {
			return entries, c, off, nil
		}
		if !bytes.HasPrefix(b[off:], []byte("070701")) && !bytes.HasPrefix(b[off:], []byte("070702")) {
			return entries, "", 0, fmt.Errorf("initrd at offset %d: neither a newc cpio header nor a known compression", off)
		}
		if len(b)-off < 110 {
			return entries, "", 0, fmt.Errorf("initrd at offset %d: truncated cpio header", off)
		}
		var f [13]uint64
		for i := range f {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				return entries, "", 0, fmt.Errorf("initrd at offset %d: bad cpio header field %d: %w", off, i, err)
			}
			f[i] = v
		}
		mode, size, nameSize := f[1], int(f[6]), int(f[11])
		nameEnd := off + 110 + nameSize
		if nameSize < 1 || nameEnd > len(b) {
			return entries, "", 0, fmt.Errorf("initrd at offset %d: cpio name runs past the end", off)
		}
		name := string(b[off+110 : nameEnd-1])
		dataOff := (nameEnd + 3) &^ 3
		if dataOff+size > len(b) {
			return entries, "", 0, fmt.Errorf("initrd at offset %d: cpio entry %q runs past the end", off, name)
		}
		off = (dataOff + size + 3) &^ 3
		if name == "TRAILER!!!" {
			continue
		}
		entries = append(entries, CpioEntry{Name: strings.TrimPrefix(strings.TrimPrefix(name, "./"), "/"),
			Mode: uint32(mode), Data: b[dataOff : dataOff+size]})
	}
}

// MaxInitrdUnpacked bounds how much a compressed initrd may expand when
// Inspect reads it.
const MaxInitrdUnpacked = 1 << 30

// readInitrd reads the archives of an initrd, decompressing gzip and zstd
// members (as the kernel does) up to MaxInitrdUnpacked bytes in all. For
// another compression it stops and names it in undecoded.
func readInitrd(b []byte) (entries []CpioEntry, compressed []string, undecoded string, err error) {
	budget := int64(MaxInitrdUnpacked)
	for depth := 0; ; depth++ {
		e, comp, at, err := ReadCpio(b)
		entries = append(entries, e...)
		if err != nil || comp == "" {
			return entries, compressed, "", err
		}
		compressed = append(compressed, comp)
		if depth == 4 {
			return entries, compressed, comp, nil
		}
		var r io.Reader
		switch comp {
		case "gzip":
			zr, err := gzip.NewReader(bytes.NewReader(b[at:]))
			if err != nil {
				return entries, compressed, comp, fmt.Errorf("initrd: gzip: %w", err)
			}
			r = zr
		case "zstd":
			zr, err := zstd.NewReader(bytes.NewReader(b[at:]), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxInitrdUnpacked))
			if err != nil {
				return entries, compressed, comp, fmt.Errorf("initrd: zstd: %w", err)
			}
			defer zr.Close()
			r = zr
		default:
			return entries, compressed, comp, nil
		}
		out, err := io.ReadAll(io.LimitReader(r, budget+1))
		if err != nil {
			return entries, compressed, comp, fmt.Errorf("initrd: %s: %w", comp, err)
		}
		if int64(len(out)) > budget {
			return entries, compressed, comp, fmt.Errorf("initrd: %s: unpacks to more than %d bytes", comp, MaxInitrdUnpacked)
		}
		budget -= int64(len(out))
		b = out
	}
}
