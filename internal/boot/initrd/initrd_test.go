package initrd_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/vesselos/vessel/internal/boot/initrd"
	"github.com/vesselos/vessel/internal/boot/kmod/kmodtest"
	"github.com/vesselos/vessel/internal/trust"
)

const pid = "0f8fad5b-d9cb-469f-a165-70867728950e"

type inputs struct{ vessel, ca, leaf, modules string }

func setup(t *testing.T) inputs {
	t.Helper()
	dir := t.TempDir()
	in := inputs{vessel: filepath.Join(dir, "vessel"), ca: filepath.Join(dir, "ca.pem"), leaf: filepath.Join(dir, "leaf.pem"), modules: filepath.Join(dir, "lib", "6.1.0-test")}
	write := func(p string, b []byte) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(in.vessel, kmodtest.Executable())
	write(in.ca, certPEM(t, true))
	write(in.leaf, certPEM(t, false))
	write(filepath.Join(in.modules, "kernel/fs/ext4.ko"), kmodtest.Module("depends=jbd2"))
	write(filepath.Join(in.modules, "kernel/fs/jbd2.ko"), kmodtest.Module("depends="))
	write(filepath.Join(in.modules, "kernel/drivers/virtio_blk.ko"), kmodtest.Module("depends=virtio"))
	write(filepath.Join(in.modules, "modules.builtin"), []byte("kernel/drivers/virtio.ko\n"))
	return in
}

func certPEM(t *testing.T, isCA bool) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: isCA}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return trust.PEMCerts(c)
}

func build(t *testing.T, o initrd.Options) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd.img")
	if _, err := initrd.Build(o, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func opts(in inputs) initrd.Options {
	return initrd.Options{Vessel: in.vessel, CA: in.ca, ProductID: pid, Modules: in.modules, Names: []string{"ext4", "virtio_blk"}, Compress: initrd.CompressNone}
}

func TestContentAndOrder(t *testing.T) {
	in := setup(t)
	b := build(t, opts(in))
	files := map[string]cpio.Record{}
	var names []string
	r := cpio.Newc.Reader(bytes.NewReader(b))
	for {
		rec, err := r.ReadRecord()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Name == cpio.Trailer {
			break
		}
		files[rec.Name] = rec
		names = append(names, rec.Name)
		if rec.UID != 0 || rec.GID != 0 || rec.MTime != initrd.MTime {
			t.Errorf("%s: uid %d gid %d mtime %d", rec.Name, rec.UID, rec.GID, rec.MTime)
		}
	}
	read := func(name string) string {
		rec, ok := files[name]
		if !ok {
			t.Fatalf("%s missing; have %v", name, names)
		}
		data, err := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	if got := read("etc/vessel/product-id"); got != pid+"\n" {
		t.Errorf("product-id %q", got)
	}
	ca, _ := os.ReadFile(in.ca)
	if read("etc/vessel/manifest-ca.pem") != string(ca) {
		t.Error("CA differs")
	}
	if read("init") != string(kmodtest.Executable()) || files["init"].Mode&0o111 == 0 {
		t.Error("/init is not the vessel binary, executable")
	}
	want := "/lib/modules/6.1.0-test/kernel/fs/jbd2.ko\n/lib/modules/6.1.0-test/kernel/fs/ext4.ko\n/lib/modules/6.1.0-test/kernel/drivers/virtio_blk.ko\n"
	if got := read("etc/vessel/modules"); got != want {
		t.Errorf("module order\n got %q\nwant %q", got, want)
	}
	c := files["dev/console"]
	if c.Mode&cpio.S_IFMT != cpio.S_IFCHR || c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console: mode %o %d:%d", c.Mode, c.Rmajor, c.Rminor)
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("entries not sorted: %s before %s", names[i-1], names[i])
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		if files[d].Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("%s is not a directory", d)
		}
	}
}

// TestReproducible: the same inputs give the same bytes, whatever the
// files' times, and a different input gives different bytes.
func TestReproducible(t *testing.T) {
	in := setup(t)
	a := build(t, opts(in))
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, p := range []string{in.vessel, in.ca, filepath.Join(in.modules, "kernel/fs/ext4.ko")} {
		os.Chtimes(p, old, old)
	}
	if b := build(t, opts(in)); !bytes.Equal(a, b) {
		t.Fatal("two builds of the same inputs differ")
	}
	o := opts(in)
	o.ProductID = "11111111-2222-4333-8444-555555555555"
	if bytes.Equal(a, build(t, o)) {
		t.Fatal("another product ID gave the same bytes")
	}
	o = opts(in)
	o.Compress = "" // the default: zstd
	z1, z2 := build(t, o), build(t, o)
	if !bytes.Equal(z1, z2) {
		t.Fatal("two zstd builds differ")
	}
	if zstd, err := exec.LookPath("zstd"); err == nil { // independent decompressor
		cmd := exec.Command(zstd, "-dc")
		cmd.Stdin = bytes.NewReader(z1)
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, a) {
			t.Fatalf("zstd -dc of the compressed initrd is not the uncompressed one (%v)", err)
		}
	}
}

// TestCpioTool lists the archive with GNU cpio, an independent reader.
func TestCpioTool(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio is not installed (make deps)")
	}
	in := setup(t)
	b := build(t, opts(in))
	cmd := exec.Command("cpio", "-tv", "--quiet")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -tv: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var listed []string
	for _, l := range lines {
		f := strings.Fields(l)
		listed = append(listed, f[len(f)-1])
		if f[len(f)-1] == "dev/console" && (!strings.HasPrefix(f[0], "crw-------") || !strings.Contains(l, "5,   1")) {
			t.Errorf("cpio sees dev/console as %q, want a char device 5,1", l)
		}
		if strings.HasSuffix(l, " init") && !strings.HasPrefix(f[0], "-rwxr-xr-x") {
			t.Errorf("init: %q", l)
		}
	}
	want := []string{"dev", "dev/console", "etc", "etc/vessel", "etc/vessel/manifest-ca.pem", "etc/vessel/modules", "etc/vessel/product-id",
		"init", "lib", "lib/modules", "lib/modules/6.1.0-test", "lib/modules/6.1.0-test/kernel", "lib/modules/6.1.0-test/kernel/drivers",
		"lib/modules/6.1.0-test/kernel/drivers/virtio_blk.ko", "lib/modules/6.1.0-test/kernel/fs", "lib/modules/6.1.0-test/kernel/fs/ext4.ko",
		"lib/modules/6.1.0-test/kernel/fs/jbd2.ko", "mnt", "proc", "run", "sys", "tmp"}
	if strings.Join(listed, " ") != strings.Join(want, " ") {
		t.Fatalf("cpio -t lists\n%s\nwant\n%s", strings.Join(listed, " "), strings.Join(want, " "))
	}
}

func TestRefusals(t *testing.T) {
	in := setup(t)
	cases := map[string]struct {
		mod  func(*initrd.Options)
		want string
	}{
		"dynamic binary": {func(o *initrd.Options) { o.Vessel = "/bin/ls" }, "dynamically linked"},
		"not ELF":        {func(o *initrd.Options) { o.Vessel = in.ca }, "not an ELF executable"},
		"bad UUID":       {func(o *initrd.Options) { o.ProductID = "acme" }, "not a UUID"},
		"CA not PEM":     {func(o *initrd.Options) { o.CA = in.vessel }, "initrd: CA " + in.vessel},
		"CA empty":       {func(o *initrd.Options) { o.CA = os.DevNull }, "no PEM certificate"},
		"leaf as CA":     {func(o *initrd.Options) { o.CA = in.leaf }, "is not a CA certificate"},
		"missing module": {func(o *initrd.Options) { o.Names = []string{"nosuch"} }, "nosuch"},
		"compression":    {func(o *initrd.Options) { o.Compress = "lz4" }, "compression"},
		"no modules dir": {func(o *initrd.Options) { o.Modules = t.TempDir() }, "no kernel modules"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			o := opts(in)
			c.mod(&o)
			_, err := initrd.Make(o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error containing %q, got %v", c.want, err)
			}
		})
	}
}

// TestRegistryFiles: the network boot's registry CA and credentials go to
// their paths (credentials readable by root only); bad ones are refused.
func TestRegistryFiles(t *testing.T) {
	in := setup(t)
	dir := t.TempDir()
	auth := filepath.Join(dir, "auth.json")
	os.WriteFile(auth, []byte(`{"auths":{"registry.lan:5000":{"auth":"dTpw"}}}`), 0o600)
	o := opts(in)
	o.RegistryCA, o.RegistryAuth = in.ca, auth
	r := cpio.Newc.Reader(bytes.NewReader(build(t, o)))
	got := map[string]uint64{}
	for {
		rec, err := r.ReadRecord()
		if errors.Is(err, io.EOF) || err == nil && rec.Name == cpio.Trailer {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[rec.Name] = rec.Mode
	}
	if got[initrd.RegistryCAPath]&0o777 != 0o644 || got[initrd.RegistryAuthPath]&0o777 != 0o600 {
		t.Fatalf("registry files: CA mode %o, credentials mode %o (want 644, 600)", got[initrd.RegistryCAPath], got[initrd.RegistryAuthPath])
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not json, not PEM"), 0o600)
	for _, c := range []struct {
		ca, auth, want string
	}{{bad, "", "registry CA"}, {"", bad, "not JSON"}} {
		o := opts(in)
		o.RegistryCA, o.RegistryAuth = c.ca, c.auth
		if _, err := initrd.Build(o, filepath.Join(dir, "x.img")); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CA %q auth %q: error %v, want %q", c.ca, c.auth, err, c.want)
		}
	}
}
