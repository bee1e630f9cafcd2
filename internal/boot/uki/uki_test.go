package uki

import (
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	bpe "github.com/vesselos/vessel/internal/boot/pe"
	"github.com/vesselos/vessel/internal/boot/secureboot"
)

const testProductID = "0f8fad5b-d9cb-469f-a165-70867728950e"

// newc writes a newc cpio archive of regular files (test helper; the
// product's initrd writer is internal/boot/initrd's).
func newc(files map[string][]byte, order []string) []byte {
	var b bytes.Buffer
	rec := func(ino int, name string, mode uint32, data []byte) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name + "\x00")
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.Write(data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for i, n := range order {
		rec(i+1, n, 0o100644, files[n])
	}
	rec(0, "TRAILER!!!", 0, nil)
	return b.Bytes()
}

type fixture struct {
	dir    string
	keys   *secureboot.Files
	ks     *secureboot.KeySet
	opts   Options
	caPEM  []byte
	caCert *x509.Certificate
}

func kernelPath(t *testing.T) string {
	m, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(m) == 0 {
		t.Skip("no kernel in /boot (apt-get install linux-image-amd64)")
	}
	return m[len(m)-1]
}

// setup makes keys and inputs; the kernel is the stub itself (any EFI image
// is a valid .linux payload) unless realKernel, which needs /boot/vmlinuz-*.
func setup(t *testing.T, realKernel ...bool) *fixture {
	t.Helper()
	stub, err := os.ReadFile(DefaultStub)
	if err != nil {
		t.Skipf("systemd-boot stub missing (apt-get install systemd-boot-efi): %v", err)
	}
	kernel := stub
	if len(realKernel) > 0 && realKernel[0] {
		if kernel, err = os.ReadFile(kernelPath(t)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	files, err := secureboot.Generate(filepath.Join(dir, "keys"), secureboot.GenerateOptions{Org: "UKI Test"})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := secureboot.Load(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	// Any certificate will do as the "manifest CA" for the inspect check.
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ks.KEK.Cert.Raw})
	initrd := newc(map[string][]byte{"init": []byte("#!/init\n"), InitrdManifestCAPath: caPEM,
		InitrdProductIDPath: []byte(testProductID + "\n")}, []string{"init", InitrdManifestCAPath, InitrdProductIDPath})
	return &fixture{dir: dir, keys: files, ks: ks, caPEM: caPEM, caCert: ks.KEK.Cert, opts: Options{
		Stub: stub, Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 quiet",
		SBAT: []byte("vessel,1,Vessel,vessel,1,https://example.com/vessel\n"),
	}}
}

func (f *fixture) build(t *testing.T) []byte {
	t.Helper()
	img, err := Build(f.opts)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := Sign(img, f.ks.DB.Signer, f.ks.DB.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func (f *fixture) write(t *testing.T, name string, b []byte) string {
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildSignInspect(t *testing.T) {
	f := setup(t, true)
	signed := f.build(t)
	if again := f.build(t); !bytes.Equal(signed, again) {
		t.Fatal("two builds from the same inputs differ")
	}
	r, err := Inspect(signed)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Valid() || !r.SignedBy(f.ks.DB.Cert) || r.SignedBy(f.ks.KEK.Cert) {
		t.Fatalf("signatures: %+v", r.Signatures)
	}
	if !r.ChecksumOK {
		t.Error("PE checksum wrong after signing")
	}
	if r.Cmdline != "console=ttyS0 quiet" || r.OSRelease["ID"] != "vessel" {
		t.Errorf("cmdline %q osrel %v", r.Cmdline, r.OSRelease)
	}
	if want := KernelRelease(f.opts.Kernel); want == "" || r.Uname != want || !strings.Contains(filepath.Base(kernelPath(t)), want) {
		t.Errorf("uname %q, kernel file %s", r.Uname, kernelPath(t))
	}
	if !strings.HasPrefix(r.SBAT, SBATHeader+"\nsystemd,") || !strings.HasSuffix(r.SBAT, "vessel,1,Vessel,vessel,1,https://example.com/vessel\n") ||
		strings.Count(r.SBAT, "\nsbat,") != 0 {
		t.Errorf("sbat:\n%s", r.SBAT)
	}
	if r.Initrd == nil || r.Initrd.ProductID != testProductID || r.Initrd.ManifestCA != f.caCert.Subject.String() || r.Initrd.Files != 3 {
		t.Errorf("initrd: %+v", r.Initrd)
	}
	var names []string
	for _, s := range r.Sections {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, " "); got != ".text .reloc .data .dynamic .rela .dynsym .sbatstb .sdmagic .osrel .cmdline .uname .sbat .initrd .linux" {
		t.Errorf("sections: %s", got)
	}
	path := f.write(t, "kernel.efi", signed)

	// objdump -h must agree on names, sizes and addresses.
	if _, err := exec.LookPath("objdump"); err == nil {
		out, err := exec.Command("objdump", "-h", path).CombinedOutput()
		if err != nil {
			t.Fatalf("objdump: %v\n%s", err, out)
		}
		re := regexp.MustCompile(`(?m)^\s+\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)`)
		m := re.FindAllStringSubmatch(string(out), -1)
		if len(m) != len(r.Sections) {
			t.Fatalf("objdump lists %d sections, inspect %d:\n%s", len(m), len(r.Sections), out)
		}
		for i, s := range r.Sections {
			size, _ := strconv.ParseUint(m[i][2], 16, 64)
			vma, _ := strconv.ParseUint(m[i][3], 16, 64)
			off, _ := strconv.ParseUint(m[i][4], 16, 64)
			// objdump prints the larger of VirtualSize and SizeOfRawData for images.
			if m[i][1] != s.Name || vma != uint64(s.VirtualAddress) || off != uint64(s.PointerToRawData) ||
				(size != uint64(s.VirtualSize) && size != uint64(s.SizeOfRawData)) {
				t.Errorf("section %d: objdump %v, inspect %+v", i, m[i][1:], s)
			}
		}
	} else {
		t.Log("objdump missing (binutils): section cross-check skipped")
	}

	if _, err := exec.LookPath("sbverify"); err != nil {
		t.Skip("sbverify missing (apt-get install sbsigntool)")
	}
	if out, err := exec.Command("sbverify", "--cert", f.keys.Keys[secureboot.DB].Cert, path).CombinedOutput(); err != nil {
		t.Fatalf("sbverify rejects the UKI under db.crt: %v\n%s", err, out)
	}
	if out, err := exec.Command("sbverify", "--cert", f.keys.Keys[secureboot.KEK].Cert, path).CombinedOutput(); err == nil {
		t.Fatalf("sbverify accepts the UKI under KEK.crt:\n%s", out)
	}
	if os.Getenv("UKI_KEEP") != "" {
		os.WriteFile(os.Getenv("UKI_KEEP"), signed, 0o644)
		exec.Command("cp", f.keys.Keys[secureboot.DB].Cert, os.Getenv("UKI_KEEP")+".crt").Run()
	}
	if _, err := exec.LookPath("osslsigncode"); err == nil {
		out, err := exec.Command("osslsigncode", "verify", "-CAfile", f.keys.Keys[secureboot.DB].Cert, "-in", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Signature verification: ok") {
			t.Errorf("osslsigncode verify: %v\n%s", err, out)
		}
	}
}

// One byte changed in .cmdline: inspect reports a digest mismatch and
// sbverify rejects the image.
func TestTamperedCmdline(t *testing.T) {
	f := setup(t)
	signed := f.build(t)
	p, err := bpe.Parse(signed)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Section(".cmdline")
	signed[s.PointerToRawData] ^= 0x01
	r, err := Inspect(signed)
	if err != nil {
		t.Fatal(err)
	}
	if r.Valid() || len(r.Signatures) != 1 || r.Signatures[0].DigestMatches {
		t.Fatalf("tampered image reported valid: %+v", r.Signatures)
	}
	if _, err := exec.LookPath("sbverify"); err != nil {
		t.Skip("sbverify missing (apt-get install sbsigntool)")
	}
	path := f.write(t, "tampered.efi", signed)
	if out, err := exec.Command("sbverify", "--cert", f.keys.Keys[secureboot.DB].Cert, path).CombinedOutput(); err == nil {
		t.Fatalf("sbverify accepts the tampered UKI:\n%s", out)
	}
}

func TestUnsignedAndCompressedInitrd(t *testing.T) {
	f := setup(t)
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(f.opts.Initrd)
	w.Close()
	f.opts.Initrd = gz.Bytes()
	img, err := Build(f.opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(img)
	if err != nil {
		t.Fatal(err)
	}
	if r.Valid() || len(r.Signatures) != 0 {
		t.Fatalf("unsigned image: %+v", r.Signatures)
	}
	// gzip is unpacked: the CA and product ID are found inside.
	if len(r.Initrd.Compressed) != 1 || r.Initrd.Compressed[0] != "gzip" || r.Initrd.ProductID != testProductID || r.Initrd.Undecoded != "" {
		t.Fatalf("initrd: %+v", r.Initrd)
	}
	// An uncompressed archive followed by a zstd one (early microcode +
	// main archive, as Debian's initramfs-tools writes them).
	zw, _ := zstd.NewWriter(nil)
	early := newc(map[string][]byte{"kernel/x86/microcode/GenuineIntel.bin": []byte("ucode")}, []string{"kernel/x86/microcode/GenuineIntel.bin"})
	f.opts.Initrd = append(early, zw.EncodeAll(newc(map[string][]byte{InitrdProductIDPath: []byte("zstd-id\n")}, []string{InitrdProductIDPath}), nil)...)
	if img, err = Build(f.opts); err != nil {
		t.Fatal(err)
	}
	if r, err = Inspect(img); err != nil {
		t.Fatal(err)
	}
	if r.Initrd.Files != 2 || r.Initrd.ProductID != "zstd-id" || len(r.Initrd.Compressed) != 1 || r.Initrd.Compressed[0] != "zstd" {
		t.Fatalf("early + zstd initrd: %+v", r.Initrd)
	}
	// xz is named, not read.
	f.opts.Initrd = append([]byte{0xfd, '7', 'z', 'X', 'Z', 0}, make([]byte, 64)...)
	if img, err = Build(f.opts); err != nil {
		t.Fatal(err)
	}
	if r, err = Inspect(img); err != nil || r.Initrd.Undecoded != "xz" || r.Initrd.Files != 0 {
		t.Fatalf("xz initrd: %v %+v", err, r.Initrd)
	}
}

func TestBadInputs(t *testing.T) {
	f := setup(t)
	for name, mod := range map[string]func(o *Options){
		"non-PE stub":        func(o *Options) { o.Stub = []byte("#!/bin/sh\n") },
		"stub is a UKI":      func(o *Options) { o.Stub, _ = Build(f.opts) },
		"stub without magic": func(o *Options) { o.Stub = bytes.Replace(o.Stub, []byte(".sdmagic"), []byte(".xxmagic"), 1) },
		"non-PE kernel":      func(o *Options) { o.Kernel = o.Initrd },
		"empty initrd":       func(o *Options) { o.Initrd = nil },
		"long cmdline":       func(o *Options) { o.Cmdline = strings.Repeat("a", MaxCmdline+1) },
		"bad sbat":           func(o *Options) { o.SBAT = []byte("vessel,one,x\n") },
		"bad os-release":     func(o *Options) { o.OSRelease = []byte("just text\n") },
	} {
		o := f.opts
		mod(&o)
		if _, err := Build(o); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// Make: missing stub, key of another certificate.
	kernel := f.write(t, "vmlinuz", f.opts.Kernel)
	initrd := f.write(t, "initrd", f.opts.Initrd)
	db := f.keys.Keys[secureboot.DB]
	base := MakeOptions{Stub: DefaultStub, Kernel: kernel, Initrd: initrd, Cmdline: "x", Uname: "6.1.0-x", Key: db.Key, Cert: db.Cert,
		Output: filepath.Join(f.dir, "out.efi")}
	o := base
	o.Stub = filepath.Join(f.dir, "nostub")
	if _, err := Make(o); err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "systemd-boot-efi") {
		t.Errorf("missing stub: %v", err)
	}
	o = base
	o.Key = f.keys.Keys[secureboot.KEK].Key
	if _, err := Make(o); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("key/cert mismatch: %v", err)
	}
	if _, err := os.Stat(base.Output); err == nil {
		t.Error("a failed Make left an output file")
	}
	res, err := Make(base)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size == 0 || res.Uname != "6.1.0-x" {
		t.Errorf("result %+v", res)
	}
}

// A certificate table that does not fit the file is an error, not a panic
// in the Authenticode parser.
func TestInspectMalformedCertificateTable(t *testing.T) {
	f := setup(t)
	signed := f.build(t)
	p, err := bpe.Parse(signed)
	if err != nil {
		t.Fatal(err)
	}
	off, size := p.SecurityDirectory()
	for name, mod := range map[string]func(b []byte){
		"size past the end": func(b []byte) { putDir(b, off, size+64) },
		"entry length 0":    func(b []byte) { b[off], b[off+1], b[off+2], b[off+3] = 0, 0, 0, 0 },
		"entry length huge": func(b []byte) { b[off+3] = 0xff },
		"not at the end":    func(b []byte) { putDir(b, off-8, size) },
	} {
		b := bytes.Clone(signed)
		mod(b)
		r, err := Inspect(b)
		if err == nil && r.Valid() {
			t.Errorf("%s: reported valid", name)
		}
		t.Logf("%s: %v", name, err)
	}
}

// putDir rewrites the security data directory of a PE32+ image.
func putDir(b []byte, off, size uint32) {
	pe := int(b[0x3c]) | int(b[0x3d])<<8
	d := pe + 24 + 112 + 8*4
	b[d], b[d+1], b[d+2], b[d+3] = byte(off), byte(off>>8), byte(off>>16), byte(off>>24)
	b[d+4], b[d+5], b[d+6], b[d+7] = byte(size), byte(size>>8), byte(size>>16), byte(size>>24)
}
