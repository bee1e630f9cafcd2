// Package uki assembles, signs and inspects unified kernel images: the
// systemd-boot EFI stub with the kernel (.linux), the initrd (.initrd), the
// kernel command line (.cmdline), an os-release (.osrel), the kernel release
// (.uname) and SBAT metadata (.sbat) added as PE sections, Authenticode-signed
// with the Secure Boot db key so that firmware verifies all of it at once.
//
// Build and Sign are deterministic: the same inputs give the same bytes (no
// timestamps; RSA PKCS#1 v1.5). Inspect reads a UKI back, checks its
// signatures against its own bytes and reads the manifest CA and product ID
// from an uncompressed initrd. Section editing is internal/boot/pe's;
// the key set is internal/boot/secureboot's.
package uki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	uefiauth "github.com/foxboron/go-uefi/authenticode"

	bpe "github.com/vesselos/vessel/internal/boot/pe"
	"github.com/vesselos/vessel/internal/boot/pkcs7"
)

// DefaultStub is where Debian's systemd-boot-efi package puts the stub.
const DefaultStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// Paths inside the initrd (newc cpio, without the leading slash) that carry
// the manifest-signing CA certificate (PEM) and the product ID (a UUID line).
// The initrd builder writes them; Inspect reads them.
const (
	InitrdManifestCAPath = "etc/vessel/manifest-ca.pem"
	InitrdProductIDPath  = "etc/vessel/product-id"
)

// MaxCmdline is the longest kernel command line x86 accepts
// (COMMAND_LINE_SIZE 2048 including the terminating NUL).
const MaxCmdline = 2047

// DefaultOSRelease is the .osrel content when none is given (the host's
// /etc/os-release would make the image depend on the build machine).
const DefaultOSRelease = "NAME=\"Vessel\"\nID=vessel\nPRETTY_NAME=\"Vessel\"\n"

// SBATHeader is the first line of every SBAT section.
const SBATHeader = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"

// Options are the inputs of Build.
type Options struct {
	Stub      []byte // the systemd-boot EFI stub
	Kernel    []byte // an EFI-stub kernel (bzImage)
	Initrd    []byte
	Cmdline   string
	OSRelease []byte // nil: DefaultOSRelease
	Uname     string // "": read from the kernel's setup header
	SBAT      []byte // extra SBAT lines (CSV), merged after the stub's and the kernel's
}

// Build returns the unsigned UKI.
func Build(o Options) ([]byte, error) {
	f, err := bpe.Parse(o.Stub)
	if err != nil {
		return nil, fmt.Errorf("read stub: %w", err)
	}
	if f.Section(".sdmagic") == nil {
		return nil, errors.New("read stub: no .sdmagic section: this is not a systemd-boot EFI stub (linuxx64.efi.stub)")
	}
	if f.Section(".linux") != nil {
		return nil, errors.New("read stub: it already has a .linux section (a UKI, not a stub)")
	}
	kf, err := pe.NewFile(bytes.NewReader(o.Kernel))
	if err != nil {
		return nil, fmt.Errorf("read kernel: not an EFI-stub kernel image (bzImage with a PE header): %w", err)
	}
	if len(o.Initrd) == 0 {
		return nil, errors.New("read initrd: empty")
	}
	if err := CheckCmdline(o.Cmdline); err != nil {
		return nil, err
	}
	osrel := o.OSRelease
	if osrel == nil {
		osrel = []byte(DefaultOSRelease)
	}
	if err := checkOSRelease(osrel); err != nil {
		return nil, err
	}
	uname := o.Uname
	if uname == "" {
		uname = KernelRelease(o.Kernel)
	}
	secs := []bpe.NewSection{{Name: ".osrel", Data: osrel}, {Name: ".cmdline", Data: []byte(o.Cmdline)}}
	if uname != "" {
		secs = append(secs, bpe.NewSection{Name: ".uname", Data: []byte(uname)})
	}
	var parts [][]byte
	if s := f.Section(".sbat"); s != nil {
		parts = append(parts, f.Content(s))
	}
	if s := kf.Section(".sbat"); s != nil {
		if b, err := s.Data(); err == nil {
			parts = append(parts, b[:min(len(b), int(s.VirtualSize))])
		}
	}
	if o.SBAT != nil {
		if err := CheckSBAT(o.SBAT); err != nil {
			return nil, err
		}
		parts = append(parts, o.SBAT)
	}
	if len(parts) > 0 {
		secs = append(secs, bpe.NewSection{Name: ".sbat", Data: MergeSBAT(parts...)})
	}
	secs = append(secs, bpe.NewSection{Name: ".initrd", Data: o.Initrd}, bpe.NewSection{Name: ".linux", Data: o.Kernel})
	if err := f.AddSections(secs, map[string]string{".sbat": ".sbatstb"}); err != nil {
		return nil, fmt.Errorf("add sections to the stub: %w", err)
	}
	return f.Bytes(), nil
}

// CheckCmdline refuses a command line the kernel would truncate or misread.
func CheckCmdline(c string) error {
	if len(c) > MaxCmdline {
		return fmt.Errorf("kernel command line is %d bytes; x86 kernels keep at most %d", len(c), MaxCmdline)
	}
	if strings.ContainsRune(c, 0) {
		return errors.New("kernel command line contains a NUL byte")
	}
	return nil
}

func checkOSRelease(b []byte) error {
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			return fmt.Errorf("os-release line %d: %q is not KEY=VALUE", i+1, line)
		}
	}
	return nil
}

// CheckSBAT validates SBAT CSV lines: component,generation,... with a
// positive integer generation.
func CheckSBAT(b []byte) error {
	for i, line := range strings.Split(strings.TrimRight(string(b), "\x00"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		fields := strings.Split(line, ",")
		if len(fields) < 2 || fields[0] == "" {
			return fmt.Errorf("sbat line %d: %q: want component,generation,vendor,package,version,url", i+1, line)
		}
		if g, err := strconv.Atoi(fields[1]); err != nil || g < 1 {
			return fmt.Errorf("sbat line %d: generation %q is not a positive integer", i+1, fields[1])
		}
	}
	return nil
}

// MergeSBAT joins SBAT sections: one header line, then every other line of
// each part in order (as ukify merges the stub's, the kernel's and the
// user's), NUL padding and blank lines dropped.
func MergeSBAT(parts ...[]byte) []byte {
	var b strings.Builder
	b.WriteString(SBATHeader + "\n")
	seen := map[string]bool{}
	for _, p := range parts {
		for _, line := range strings.Split(strings.TrimRight(string(p), "\x00"), "\n") {
			line = strings.TrimSpace(strings.TrimRight(line, "\x00"))
			if line == "" || strings.HasPrefix(line, "sbat,") || seen[line] {
				continue
			}
			seen[line] = true
			b.WriteString(line + "\n")
		}
	}
	return []byte(b.String())
}

// KernelRelease reads the kernel release ("6.1.0-28-amd64") from a bzImage
// setup header, or returns "" if there is none.
func KernelRelease(k []byte) string {
	if len(k) < 0x210 || string(k[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int(binary.LittleEndian.Uint16(k[0x20e:])) + 0x200
	if off <= 0x200 || off >= len(k) {
		return ""
	}
	end := bytes.IndexByte(k[off:min(len(k), off+256)], 0)
	if end < 0 {
		return ""
	}
	v, _, _ := strings.Cut(string(k[off:off+end]), " ")
	return v
}

// Sign returns img with an Authenticode signature by key/cert appended (any
// signature img had is kept; sign an unsigned image), and the checksum
// updated.
func Sign(img []byte, key crypto.Signer, cert *x509.Certificate) (_ []byte, err error) {
	if _, err := bpe.Parse(img); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sign: malformed image: %v", r)
		}
	}()
	p, err := uefiauth.Parse(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("sign: parse image: %w", err)
	}
	content, err := uefiauth.CreateSpcIndirectDataContent(p.Hash(crypto.SHA256), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	sig, err := pkcs7.SignAuthenticode(key, cert, content)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if err := p.AppendSignature(sig); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	out := p.Bytes()
	if err := bpe.FixChecksum(out); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return out, nil
}

// MakeOptions are file paths for Make.
type MakeOptions struct {
	Stub, Kernel, Initrd string
	Cmdline              string
	OSRelease, SBAT      string // optional files
	Uname                string
	Key, Cert            string // db key and certificate (PEM)
	Output               string
}

// readFile wraps os.ReadFile with what the file is for.
func readFile(what, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && what == "stub" {
			return nil, fmt.Errorf("read stub: %w (install Debian's systemd-boot-efi package, or use another stub)", err)
		}
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return b, nil
}
