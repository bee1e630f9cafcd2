package vmtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/boot/pcr7"
	"github.com/vesselos/vessel/internal/boot/secureboot"
)

const productID = "0f8fad5b-d9cb-469f-a165-70867728950e"

// bootEnv is what the boot tests share: a static vessel, a kernel and its
// modules, vessel's initrd and the Secure Boot keys the firmware enforces.
type bootEnv struct {
	dir, vessel, kernel, modules, initrd string
	dbKey, dbCert, vars                  string
}

// Kernel returns the newest /boot/vmlinuz-* that has a /lib/modules tree.
func Kernel() (kernel, modules string, ok bool) {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(ks)))
	for _, k := range ks {
		m := "/lib/modules/" + strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		if _, err := os.Stat(m); err == nil {
			return k, m, true
		}
	}
	return "", "", false
}

func setupBoot(t *testing.T) *bootEnv {
	t.Helper()
	if m := Missing(Config{}); m != "" {
		t.Skip(m)
	}
	for _, tool := range []string{"objcopy", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("missing %s (make deps installs binutils, openssl)", tool)
		}
	}
	if _, err := os.Stat(Stub); err != nil {
		t.Skipf("missing the systemd EFI stub %s (make deps installs systemd-boot-efi)", Stub)
	}
	e := &bootEnv{dir: t.TempDir()}
	var ok bool
	if e.kernel, e.modules, ok = Kernel(); !ok {
		t.Skip("no /boot/vmlinuz-* with its /lib/modules tree (make deps installs linux-image-amd64)")
	}
	e.vessel = filepath.Join(e.dir, "vessel")
	build := exec.Command("go", "build", "-trimpath", "-o", e.vessel, "github.com/vesselos/vessel/cmd/vessel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build a static vessel: %v\n%s", err, out)
	}
	e.dbKey, e.dbCert, e.vars = secureBootKeys(t, e.vessel, e.dir)
	ca := filepath.Join(e.dir, "ca.pem")
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(e.dir, "ca.key"), "-out", ca,
		"-subj", "/CN=vmtest manifest CA", "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE")
	e.initrd = filepath.Join(e.dir, "initrd.img")
	run(t, e.vessel, "boot", "initrd", "--ca", ca, "--product-id", productID, "--modules", e.modules, "-o", e.initrd)
	return e
}

// secureBootKeys makes a PK/KEK/db set with vessel keys uefi and an OVMF
// variable store that enforces it with vessel boot vars.
func secureBootKeys(t *testing.T, vessel, dir string) (key, cert, vars string) {
	if _, err := os.Stat(OVMFVars); err != nil {
		t.Skipf("missing %s (make deps installs ovmf)", OVMFVars)
	}
	keys := filepath.Join(dir, "sb")
	run(t, vessel, "keys", "uefi", keys, "--org", "vmtest")
	vars = filepath.Join(dir, "VARS.fd")
	run(t, vessel, "boot", "vars", "--keys", keys, "-o", vars)
	return filepath.Join(keys, "db.key"), filepath.Join(keys, "db.crt"), vars
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// makeDisk makes a disk with vessel boot disk: an image in a fresh store,
// a product key, a signed manifest. It returns "" and the reason when this
// machine cannot make the image (vessel image create needs root and
// mksquashfs).
func makeDisk(t *testing.T, e *bootEnv, uki string) (string, string) {
	if os.Geteuid() != 0 {
		return "", "not root"
	}
	for _, tool := range []string{"mksquashfs", "mkfs.ext4", "mkfs.vfat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", "no " + tool
		}
	}
	dir := filepath.Join(e.dir, "disk")
	app := filepath.Join(dir, "app")
	os.MkdirAll(app, 0o755)
	os.WriteFile(filepath.Join(app, "hello"), []byte("hello\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "system.yaml"), []byte("product: acme\nversion: 1\nservices:\n  - name: web\n    image: web:1\n"), 0o644)
	v := vesselIn(t, e.vessel, dir, filepath.Join(dir, "store"))
	v("image", "create", "web:1", "--layer", "app")
	v("keys", "init", "keys", "--org", "Acme")
	v("keys", "product", "keys", "--name", "acme", "--product-id", productID)
	v("manifest", "build", "system.yaml", "--keys", "keys", "-o", "manifest.json")
	v("manifest", "sign", "manifest.json", "--key", "keys/products/acme/product.key", "--cert", "keys/products/acme/product.pem", "-o", "manifest.signed")
	img := filepath.Join(dir, "disk.img")
	v("boot", "disk", "--manifest", "manifest.signed", "--uki", uki, "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--size", "400M", "-o", img)
	return img, ""
}

// esp makes an ESP directory holding uki as the removable-media boot path.
func esp(t *testing.T, uki string) string {
	dir := filepath.Join(t.TempDir(), "esp")
	if err := os.MkdirAll(filepath.Join(dir, "EFI", "BOOT"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(uki)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "EFI", "BOOT", "BOOTX64.EFI"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

var pcr7Line = regexp.MustCompile(`vessel-init: pcr7 sha256 tpm=([0-9a-f]{64}) replay=([0-9a-f]{64}) events=(\d+) match=(true|false)`)

// TestSecureBoot boots three UKIs built around vessel's initrd under OVMF
// Secure Boot, with keys from vessel keys uefi enforced by a variable store
// from vessel boot vars: made by vessel boot uki and signed with the enrolled db key (boots to vessel's /init,
// whose PCR7 must equal the replay of its event log), signed with another
// key and unsigned (both refused by the firmware). Three boots in all.
func TestSecureBoot(t *testing.T) {
	e := setupBoot(t)
	cmdline := "console=ttyS0 vessel.test=pcr7,disk"
	signed := filepath.Join(e.dir, "signed.efi")
	run(t, e.vessel, "boot", "uki", "--kernel", e.kernel, "--initrd", e.initrd, "--cmdline", cmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", signed)
	other := filepath.Join(e.dir, "other.efi")
	run(t, e.vessel, "keys", "uefi", filepath.Join(e.dir, "other"), "--org", "not enrolled")
	run(t, e.vessel, "boot", "uki", "--kernel", e.kernel, "--initrd", e.initrd, "--cmdline", cmdline,
		"--key", filepath.Join(e.dir, "other", "db.key"), "--cert", filepath.Join(e.dir, "other", "db.crt"), "-o", other)
	// The unsigned UKI is assembled by objcopy: an independent builder.
	unsigned := filepath.Join(e.dir, "unsigned.efi")
	if err := BuildUKI(e.kernel, e.initrd, cmdline, unsigned); err != nil {
		t.Fatal(err)
	}

	// The enrolled boot starts from a disk made by vessel boot disk when
	// this machine can make one (root and mksquashfs for the image), else
	// from an ESP directory.
	enrolled := Config{ESPDir: esp(t, signed), Vars: e.vars, TPM: true}
	if img, why := makeDisk(t, e, signed); img != "" {
		enrolled.ESPDir, enrolled.Disk = "", img
	} else {
		t.Logf("booting the enrolled UKI from an ESP directory, not a disk: %s", why)
	}

	t.Run("enrolled-key-boots", func(t *testing.T) {
		t.Parallel()
		vm := StartT(t, enrolled)
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		if _, err := vm.Wait(ctx, "vessel-init: powering off"); err != nil {
			t.Fatal(err)
		}
		if err := vm.WaitExit(ctx); err != nil {
			t.Fatalf("the guest did not power off cleanly: %v", err)
		}
		started, ok := vm.Find("vessel-init: started (vessel ")
		if !ok || !strings.Contains(started.Text, "product "+productID) {
			t.Fatalf("no start marker naming product %s: %q", productID, started.Text)
		}
		if l, ok := vm.Find("vessel-init: FAILED"); ok {
			t.Fatalf("/init failed: %s", l.Text)
		}
		if _, ok := vm.Find("vessel-init: modules: "); !ok {
			t.Fatal("no module-load line")
		}
		if enrolled.Disk != "" {
			if _, ok := vm.Find("vessel-init: data partition /dev/vda2 (vessel-data)"); !ok {
				t.Fatal("/init did not find the disk's vessel-data partition")
			}
		}
		var m []string
		for _, l := range vm.Lines() {
			if m = pcr7Line.FindStringSubmatch(l.Text); m != nil {
				break
			}
		}
		if m == nil {
			t.Fatal("no PCR7 line from vessel.test=pcr7")
		}
		if m[1] != m[2] || m[4] != "true" {
			t.Fatalf("PCR7 %s differs from the replay of the event log %s", m[1], m[2])
		}
		if m[1] == strings.Repeat("0", 64) || m[3] == "0" {
			t.Fatalf("PCR7 %s from %s events: nothing was measured", m[1], m[3])
		}
		ks, err := secureboot.Load(filepath.Join(e.dir, "sb"))
		if err != nil {
			t.Fatal(err)
		}
		in, err := pcr7.KeySetInputs(ks, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := pcr7.Predict(in).PCR7.String(); m[1] != want {
			t.Errorf("guest PCR7 %s differs from the offline prediction from the key set %s", m[1], want)
		}
		t.Logf("PCR7 (sha256) = %s, %s events; booted to /init marker in %v", m[1], m[3], started.At.Round(time.Millisecond))
	})
	for name, uki := range map[string]string{"other-key-refused": other, "unsigned-refused": unsigned} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			vm := StartT(t, Config{ESPDir: esp(t, uki), Vars: e.vars})
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			_, err := vm.Wait(ctx, "vessel-init:", "Linux version")
			if !errors.Is(err, ErrDenied) {
				t.Fatalf("want the firmware to refuse the image (Access Denied), got %v", err)
			}
			vm.Kill()
			if l, ok := vm.Find("vessel-init:"); ok {
				t.Fatalf("the refused image ran: %s", l.Text)
			}
		})
	}
}

// vesselIn returns a function that runs the vessel binary bin in dir with
// --root store, fails the test with its output on an error, and returns
// what it printed.
func vesselIn(t *testing.T, bin, dir, store string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--root", store}, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vessel %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}
