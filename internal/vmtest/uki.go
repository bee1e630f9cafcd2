package vmtest

import (
	"debug/pe"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Stub is the systemd EFI stub (Debian package systemd-boot-efi).
const Stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// BuildUKI assembles an unsigned UKI with objcopy (binutils), the way
// systemd documents it: .osrel, .cmdline, .linux and .initrd sections
// page-aligned after the stub's last section. It is a test fixture and an
// independent cross-check for vessel's own UKI builder (vessel boot uki),
// not the product path.
func BuildUKI(kernel, initrd, cmdline, out string) error {
	f, err := pe.Open(Stub)
	if err != nil {
		return fmt.Errorf("build UKI: stub: %w", err)
	}
	var end uint32
	for _, s := range f.Sections {
		if e := s.VirtualAddress + s.VirtualSize; e > end {
			end = e
		}
	}
	var base uint64
	if oh, ok := f.OptionalHeader.(*pe.OptionalHeader64); ok {
		base = oh.ImageBase
	}
	f.Close()
	dir, err := os.MkdirTemp("", "uki-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	osrel := filepath.Join(dir, "osrel")
	cmd := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(osrel, []byte("ID=vessel\nNAME=Vessel\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(cmd, []byte(cmdline), 0o644); err != nil {
		return err
	}
	args := []string{}
	vma := uint64(end)
	for _, s := range []struct{ name, file string }{{".osrel", osrel}, {".cmdline", cmd}, {".linux", kernel}, {".initrd", initrd}} {
		st, err := os.Stat(s.file)
		if err != nil {
			return fmt.Errorf("build UKI: %w", err)
		}
		vma = (vma + 0xfff) &^ 0xfff
		args = append(args, "--add-section", s.name+"="+s.file, "--change-section-vma", fmt.Sprintf("%s=%#x", s.name, base+vma))
		vma += uint64(st.Size())
	}
	args = append(args, Stub, out)
	if b, err := exec.Command("objcopy", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("build UKI: objcopy: %v: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}
