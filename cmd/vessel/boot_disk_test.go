package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootDiskBlockDevice writes the disk to a block device (a loop
// device over a file) and reads it back with sfdisk and mtools.
func TestBootDiskBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device and vessel image create")
	}
	const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	for _, tool := range []string{"losetup", "mksquashfs", "sfdisk", "mcopy", "mkfs.vfat", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps)", tool)
		}
	}
	if _, err := os.Stat(stub); err != nil {
		t.Skipf("%s is missing (make deps installs systemd-boot-efi)", stub)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("VESSEL_ROOT", filepath.Join(dir, "store"))
	os.MkdirAll("app", 0o755)
	os.WriteFile("app/hello", []byte("hello\n"), 0o644)
	os.WriteFile("system.yaml", []byte("product: acme\nversion: 1\nservices:\n  - name: web\n    image: web:1\n"), 0o644)
	const pid = "0f8fad5b-d9cb-469f-a165-70867728950e"
	for _, args := range [][]string{
		{"image", "create", "web:1", "--layer", "app"},
		{"keys", "init", "keys", "--org", "Acme"},
		{"keys", "product", "keys", "--name", "acme", "--product-id", pid},
		{"manifest", "build", "system.yaml", "--keys", "keys", "-o", "manifest.json"},
		{"manifest", "sign", "manifest.json", "--key", "keys/products/acme/product.key", "--cert", "keys/products/acme/product.pem", "-o", "manifest.signed"},
	} {
		if code := run(args); code != 0 {
			t.Fatalf("vessel %s: exit %d", strings.Join(args, " "), code)
		}
	}
	backing := filepath.Join(dir, "dev.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(400 << 20)
	f.Close()
	out, err := exec.Command("losetup", "-f", "--show", backing).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v %s", dev, err, out)
		}
	})
	if code := run([]string{"boot", "disk", "--manifest", "manifest.signed", "--uki", stub, "--ca", "keys/manifest-ca.pem", "-o", dev}); code != 0 {
		t.Fatalf("vessel boot disk -o %s: exit %d", dev, code)
	}
	sf, err := exec.Command("sfdisk", "-d", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk -d %s: %v\n%s", dev, err, sf)
	}
	for _, want := range []string{"label: gpt", "start=        2048, size=      524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B", `name="vessel-data"`, "type=9DF27203-68D2-4E7D-99C4-417308F53EF0"} {
		if !strings.Contains(string(sf), want) {
			t.Errorf("sfdisk -d lacks %q:\n%s", want, sf)
		}
	}
	if out, err := exec.Command("mcopy", "-i", dev+"@@1M", "::/EFI/BOOT/BOOTX64.EFI", "boot.efi").CombinedOutput(); err != nil {
		t.Fatalf("mcopy: %v %s", err, out)
	}
	a, _ := os.ReadFile("boot.efi")
	b, _ := os.ReadFile(stub)
	if !bytes.Equal(a, b) {
		t.Fatal("the ESP's BOOTX64.EFI is not the UKI")
	}
}
