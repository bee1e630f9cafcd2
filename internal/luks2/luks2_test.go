package luks2

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	luks "github.com/anatol/luks.go"
	"golang.org/x/crypto/xts"
)

const marker = "vessel-plaintext-marker-5f1c"

// volume makes a file with an ext4 filesystem (holding marker) in the
// data segment and returns its path and the filesystem's bytes.
func volume(t *testing.T) (string, []byte) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("missing mkfs.ext4 (make deps installs e2fsprogs)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "m.txt"), []byte(marker+"\n"), 0o644)
	fs := filepath.Join(dir, "fs.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, fs, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	img, _ := os.ReadFile(fs)
	if !bytes.Contains(img, []byte(marker)) {
		t.Fatal("the plain filesystem does not hold the marker")
	}
	vol := filepath.Join(dir, "vol")
	b := make([]byte, DataOffset+len(img))
	copy(b[DataOffset:], img)
	if err := os.WriteFile(vol, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return vol, img
}

func TestFormatEncryptCrossCheck(t *testing.T) {
	vol, plain := volume(t)
	vk := make([]byte, KeySize)
	rand.Read(vk)
	pass := []byte("0f5a0b9d7e6c4f3a2b1c0d9e8f7a6b5c")
	if err := Format(vol, vk, pass, Options{Label: "vessel-state"}); err != nil {
		t.Fatal(err)
	}
	n, err := EncryptInPlace(vol, vk)
	if err != nil || n != int64(len(plain)) {
		t.Fatalf("encrypt in place: %d bytes, %v; want %d", n, err, len(plain))
	}
	raw, _ := os.ReadFile(vol)
	if bytes.Contains(raw, []byte(marker)) {
		t.Fatal("the plaintext marker is still on the raw volume")
	}
	if ok, err := IsLUKS(vol); !ok || err != nil {
		t.Fatalf("IsLUKS = %v, %v", ok, err)
	}

	// luks.go (an independent reader) recovers the volume key, and the
	// segment decrypts to the filesystem.
	d, err := luks.Open(vol)
	if err != nil {
		t.Fatalf("luks.go open: %v", err)
	}
	defer d.Close()
	if d.Version() != 2 {
		t.Fatalf("luks.go version %d", d.Version())
	}
	v, err := d.UnsealVolume(0, pass)
	if err != nil {
		t.Fatalf("luks.go unseal: %v", err)
	}
	if v.StorageOffset != DataOffset || v.StorageEncryption != "aes-xts-plain64" || v.StorageSectorSize != SectorSize {
		t.Fatalf("luks.go volume %+v", v)
	}
	if _, err := d.UnsealVolume(0, []byte("wrong")); err == nil {
		t.Fatal("luks.go accepted a wrong passphrase")
	}
	c, _ := xts.NewCipher(aes.NewCipher, vk)
	seg := raw[DataOffset:]
	dec := make([]byte, len(seg))
	for i := 0; i < len(seg); i += SectorSize {
		c.Decrypt(dec[i:i+SectorSize], seg[i:i+SectorSize], uint64(i/SectorSize))
	}
	if !bytes.Equal(dec, plain) {
		t.Fatal("the decrypted segment is not the filesystem")
	}

	// VolumeKey reads it back; a wrong passphrase is ErrPassphrase.
	got, sg, err := VolumeKey(vol, pass)
	if err != nil || !bytes.Equal(got, vk) || sg.Offset != DataOffset || sg.Encryption != "aes-xts-plain64" || sg.SectorSize != SectorSize {
		t.Fatalf("VolumeKey = %x, %+v, %v", got, sg, err)
	}
	if _, _, err := VolumeKey(vol, []byte("wrong")); !errors.Is(err, ErrPassphrase) {
		t.Fatalf("VolumeKey with a wrong passphrase: %v", err)
	}

	// cryptsetup reads the header and opens the keyslot (no device-mapper needed).
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("missing cryptsetup (make deps installs cryptsetup-bin)")
	}
	out, err := exec.Command("cryptsetup", "luksDump", vol).CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup luksDump: %v: %s", err, out)
	}
	for _, want := range []string{"Version:       \t2", "Label:         \tvessel-state", "aes-xts-plain64", "offset: 16777216 [bytes]", "PBKDF:      pbkdf2"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("luksDump lacks %q:\n%s", want, out)
		}
	}
	kf := filepath.Join(t.TempDir(), "key")
	os.WriteFile(kf, pass, 0o600)
	if out, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", kf, vol).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup open --test-passphrase: %v: %s", err, out)
	}
	os.WriteFile(kf, []byte("wrong"), 0o600)
	if err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", kf, vol).Run(); err == nil {
		t.Fatal("cryptsetup accepted a wrong passphrase")
	}
	// A volume cryptsetup formats (pbkdf2, as vessel writes) opens with VolumeKey.
	os.WriteFile(kf, pass, 0o600)
	cs := filepath.Join(t.TempDir(), "cs")
	os.WriteFile(cs, make([]byte, DataOffset+1<<20), 0o600)
	vkf0 := filepath.Join(t.TempDir(), "vk0")
	os.WriteFile(vkf0, vk, 0o600)
	if out, err := exec.Command("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--hash", "sha256", "--cipher", "aes-xts-plain64", "--key-size", "512", "--volume-key-file", vkf0, "--key-file", kf, cs).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup luksFormat: %v: %s", err, out)
	}
	if got, _, err := VolumeKey(cs, pass); err != nil || !bytes.Equal(got, vk) {
		t.Fatalf("VolumeKey of cryptsetup's volume = %x, %v", got, err)
	}
	// A corrupted header is refused.
	b, _ := os.ReadFile(cs)
	b[4096+10] ^= 1
	os.WriteFile(cs, b, 0o600)
	if _, _, err := VolumeKey(cs, pass); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupted header: %v", err)
	}

	// cryptsetup's own dump of the volume key equals ours.
	os.WriteFile(kf, pass, 0o600)
	vkf := filepath.Join(t.TempDir(), "vk")
	if out, err := exec.Command("cryptsetup", "luksDump", "--dump-volume-key", "--volume-key-file", vkf, "--key-file", kf, "-q", vol).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup --dump-volume-key: %v: %s", err, out)
	}
	if got, _ := os.ReadFile(vkf); !bytes.Equal(got, vk) {
		t.Fatalf("cryptsetup's volume key %x, want %x", got, vk)
	}
}

func TestFormatRefuses(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.WriteFile(small, make([]byte, 1<<20), 0o600)
	if err := Format(small, make([]byte, KeySize), []byte("p"), Options{}); err == nil || !strings.Contains(err.Error(), "at least") {
		t.Fatalf("small device: err = %v", err)
	}
	if err := Format(small, make([]byte, 32), []byte("p"), Options{}); err == nil {
		t.Fatal("a 32-byte volume key was accepted")
	}
	if ok, err := IsLUKS(small); ok || err != nil {
		t.Fatalf("IsLUKS(zeros) = %v, %v", ok, err)
	}
}
