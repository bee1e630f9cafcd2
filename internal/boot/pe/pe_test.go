package pe

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func readStub(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(stubPath)
	if err != nil {
		t.Skipf("systemd-boot stub missing (apt-get install systemd-boot-efi): %v", err)
	}
	return b
}

// The checksum algorithm must reproduce the stub's own stored checksum.
func TestChecksumMatchesStub(t *testing.T) {
	b := readStub(t)
	f, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Checksum(b, f.ChecksumOffset()), f.StoredChecksum(); got != want {
		t.Fatalf("checksum %#x, stub says %#x", got, want)
	}
}

func TestAddSectionsObjdump(t *testing.T) {
	b := readStub(t)
	f, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	sbat := append(bytes.Clone(f.Content(f.Section(".sbat"))), []byte(strings.Repeat("x", 600)+"\n")...)
	if err := f.AddSections([]NewSection{{".cmdline", []byte("console=ttyS0")}, {".linux", bytes.Repeat([]byte{1}, 5000)},
		{".sbat", sbat}}, map[string]string{".sbat": ".sbatold"}); err != nil {
		t.Fatal(err)
	}
	g, err := Parse(f.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if g.StoredChecksum() != Checksum(f.Bytes(), g.ChecksumOffset()) {
		t.Fatal("checksum not updated")
	}
	var names []string
	for _, s := range g.Sections {
		names = append(names, s.Name)
		if s.Name == ".cmdline" || s.Name == ".linux" || s.Name == ".sbat" {
			if s.VirtualAddress%PageAlign != 0 || s.PointerToRawData%0x200 != 0 || s.Characteristics != DataSection {
				t.Errorf("%s: %+v", s.Name, s)
			}
		}
	}
	if got := strings.Join(names, " "); got != ".text .reloc .data .dynamic .rela .dynsym .sbatold .sdmagic .cmdline .linux .sbat" {
		t.Fatalf("sections %s", got)
	}
	if string(g.Content(g.Section(".cmdline"))) != "console=ttyS0" {
		t.Fatal(".cmdline content")
	}
	if _, err := exec.LookPath("objdump"); err != nil {
		t.Skip("objdump missing (binutils)")
	}
	p := filepath.Join(t.TempDir(), "x.efi")
	os.WriteFile(p, f.Bytes(), 0o644)
	out, err := exec.Command("objdump", "-h", p).CombinedOutput()
	if err != nil {
		t.Fatalf("objdump: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), ".linux        00001388") || !strings.Contains(string(out), "pei-x86-64") {
		t.Fatalf("objdump -h disagrees:\n%s", out)
	}
	// A second .cmdline is refused.
	if err := g.AddSections([]NewSection{{".cmdline", []byte("x")}}, nil); err == nil {
		t.Fatal("duplicate .cmdline accepted")
	}
}

func TestParseRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty": nil, "text": []byte("#!/bin/sh\necho hi\n"), "mz only": append([]byte("MZ"), make([]byte, 100)...),
	} {
		if _, err := Parse(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
