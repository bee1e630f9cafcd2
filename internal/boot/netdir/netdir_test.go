package netdir

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/boot/uki"
)

// ukiWith builds a UKI (the stub as its kernel: any EFI image will do)
// with cmdline, signed by ks's db key unless unsigned.
func ukiWith(t *testing.T, ks *secureboot.KeySet, dir, name, cmdline string, unsigned bool) string {
	t.Helper()
	stub, err := os.ReadFile(uki.DefaultStub)
	if err != nil {
		t.Skipf("systemd-boot stub missing (apt-get install systemd-boot-efi): %v", err)
	}
	img, err := uki.Build(uki.Options{Stub: stub, Kernel: stub, Initrd: []byte("not a cpio"), Cmdline: cmdline})
	if err != nil {
		t.Fatal(err)
	}
	if !unsigned {
		if img, err = uki.Sign(img, ks.DB.Signer, ks.DB.Cert); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func keys(t *testing.T, dir, org string) *secureboot.KeySet {
	t.Helper()
	if _, err := secureboot.Generate(filepath.Join(dir, org), secureboot.GenerateOptions{Org: org}); err != nil {
		t.Fatal(err)
	}
	ks, err := secureboot.Load(filepath.Join(dir, org))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	ks := keys(t, dir, "Acme")
	ref := "docker://10.0.2.100:5000/acme/system@sha256:" + strings.Repeat("ab", 32)
	good := ukiWith(t, ks, dir, "good.efi", "console=ttyS0 vessel.manifest="+ref+" vessel.registry-plain-http=1", false)
	out := filepath.Join(dir, "tftp")
	res, err := Write(Options{UKI: good, Dir: out, Cert: ks.DB.Cert})
	if err != nil {
		t.Fatal(err)
	}
	src, _ := os.ReadFile(good)
	served, err := os.ReadFile(filepath.Join(out, BootFile))
	if err != nil || string(served) != string(src) {
		t.Fatalf("%s is not the UKI byte for byte (%v)", BootFile, err)
	}
	if res.SHA256 != fmt.Sprintf("%x", sha256.Sum256(src)) || res.Size != len(src) || res.Manifest != ref || len(res.Signers) != 1 {
		t.Fatalf("result %+v", res)
	}
	var rec Result
	b, _ := os.ReadFile(filepath.Join(out, RecordFile))
	if err := json.Unmarshal(b, &rec); err != nil || rec.SHA256 != res.SHA256 || rec.Manifest != ref {
		t.Fatalf("%s: %v: %s", RecordFile, err, b)
	}
	conf, _ := os.ReadFile(filepath.Join(out, DnsmasqFile))
	for _, want := range []string{"enable-tftp\n", "tftp-root=" + out + "\n", "dhcp-boot=tag:efi-x86_64," + BootFile + "\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("%s lacks %q:\n%s", DnsmasqFile, want, conf)
		}
	}
	ents, _ := os.ReadDir(out)
	if len(ents) != 3 {
		t.Errorf("%d files in %s, want 3 (no temp files left)", len(ents), out)
	}

	// vessel.manifest=dhcp: the example configuration sends option 224.
	dhcp := ukiWith(t, ks, dir, "dhcp.efi", "console=ttyS0 vessel.manifest=dhcp", false)
	if res, err = Write(Options{UKI: dhcp, Dir: filepath.Join(dir, "d")}); err != nil || res.Manifest != "dhcp" {
		t.Fatalf("dhcp: %+v, %v", res, err)
	}
	conf, _ = os.ReadFile(filepath.Join(dir, "d", DnsmasqFile))
	if !strings.Contains(string(conf), "dhcp-option=224,") {
		t.Errorf("dhcp example lacks option 224:\n%s", conf)
	}

	other := keys(t, dir, "Mallory")
	for _, c := range []struct {
		name string
		o    Options
		want string
	}{
		{"unsigned", Options{UKI: ukiWith(t, ks, dir, "unsigned.efi", "vessel.manifest="+ref, true)}, "not validly signed"},
		{"other signer", Options{UKI: good, Cert: other.DB.Cert}, "no valid signature by"},
		{"no manifest", Options{UKI: ukiWith(t, ks, dir, "disk.efi", "console=ttyS0 vessel.test=root", false)}, "names no manifest"},
		{"bad manifest", Options{UKI: ukiWith(t, ks, dir, "bad.efi", "vessel.manifest=docker://h:5000/acme/system", false)}, "name a tag"},
		{"not a UKI", Options{UKI: uki.DefaultStub}, "not a unified kernel image"},
	} {
		c.o.Dir = filepath.Join(dir, "out-"+strings.ReplaceAll(c.name, " ", "-"))
		_, err := Write(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		if _, serr := os.Stat(c.o.Dir); serr == nil {
			t.Errorf("%s: %s was written", c.name, c.o.Dir)
		}
	}
}
