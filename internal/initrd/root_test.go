package initrd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

func TestSwitchRootPlan(t *testing.T) {
	p := NewSwitchRoot("/sysroot")
	var got []string
	for _, m := range p.Moves {
		if m.Flags != msMove || m.FSType != "" {
			t.Errorf("%s is not a plain MS_MOVE: %+v", m.Source, m)
		}
		got = append(got, m.Source+"->"+m.Target)
	}
	want := "/dev->/sysroot/dev /proc->/sysroot/proc /sys->/sysroot/sys /run->/sysroot/run /data->/sysroot/var/lib/vessel"
	if strings.Join(got, " ") != want {
		t.Fatalf("moves %v, want %s", got, want)
	}
	if p.Init != "/sbin/init" || len(p.Argv) != 1 || p.Argv[0] != "/sbin/init" || p.NewRoot != "/sysroot" {
		t.Fatalf("plan %+v", p)
	}
	if strings.Join(p.Env, " ") != "PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=linux" || p.Watchdog != 0 {
		t.Fatalf("environment %q, watchdog fd %d: want the base environment and no watchdog", p.Env, p.Watchdog)
	}
	// The host's init must recognize itself by this argv[0].
	if p.Argv[0] != HostInit {
		t.Fatal("argv[0] is not what IsHostInit looks for")
	}
}

func TestCorruptions(t *testing.T) {
	log := "device-mapper: verity: sha256 using implementation \"sha256-generic\"\n" +
		"device-mapper: verity: 7:0: data block 0 is corrupted\n" +
		"device-mapper: verity: 7:0: data block 0 is corrupted\n" +
		"SQUASHFS error: Failed to read block 0x0: -5\n" +
		"device-mapper: verity: 7:1: metadata block 12 is corrupted\n"
	got := Corruptions(log)
	want := []Corruption{{"7:0", "data", 0}, {"7:1", "metadata", 12}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	root := t.TempDir()
	os.MkdirAll(root+"/sys/dev/block/7:0/loop", 0o755)
	os.WriteFile(root+"/sys/dev/block/7:0/loop/backing_file", []byte("/data/oci/blobs/sha256/"+strings.Repeat("ab", 32)+"\n"), 0o644)
	if s := got[0].describe(root); s != "dm-verity: data block 0 is corrupted (device 7:0, layer sha256:"+strings.Repeat("ab", 32)+")" {
		t.Fatalf("describe: %s", s)
	}
	if s := got[1].describe(root); s != "dm-verity: metadata block 12 is corrupted (device 7:1)" {
		t.Fatalf("describe without the loop device: %s", s)
	}
	if len(Corruptions("nothing here")) != 0 {
		t.Fatal("found a corruption in a clean log")
	}
}

// signedFor makes a CA and a product key in dir and returns the CA and a
// signed manifest for product pid at version, naming a host image that is
// not in any store.
func signedFor(t *testing.T, keys, pid string, version int64) []byte {
	t.Helper()
	if _, err := os.Stat(filepath.Join(keys, trust.ManifestCACert)); err != nil {
		if _, err := trust.Init(keys, trust.InitOptions{Org: "Test"}); err != nil {
			t.Fatal(err)
		}
	}
	name := "p" + pid[:8]
	if _, err := trust.Product(keys, trust.ProductOptions{Name: name, ProductID: pid}); err != nil {
		t.Fatal(err)
	}
	img := manifest.Image{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.FromString("host"), Size: 100}
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pid, Version: version, Hostfs: &img,
		Services: []manifest.Service{{Name: "web", Image: img, Restart: "always", Network: "none"}}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, err := trust.LoadKey(filepath.Join(keys, trust.ProductsDir, name, trust.ProductKey))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := trust.LoadCerts(filepath.Join(keys, trust.ProductsDir, name, trust.ProductCert))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := trust.Sign(b, key, certs)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func TestVerifyDataRefuses(t *testing.T) {
	const pid = "0f8fad5b-d9cb-469f-a165-70867728950e"
	keys := t.TempDir()
	good := signedFor(t, keys, pid, 2)
	other := signedFor(t, keys, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", 2)
	cas, err := trust.LoadCerts(filepath.Join(keys, trust.ManifestCACert))
	if err != nil {
		t.Fatal(err)
	}
	data := func(t *testing.T, signed []byte) string {
		dir := t.TempDir()
		if _, err := store.Open(dir); err != nil {
			t.Fatal(err)
		}
		if signed != nil {
			d := digest.FromBytes(mustPayload(t, signed))
			if err := registry.RecordCurrent(dir, &registry.Current{Product: pid, Version: 2, Digest: d}, signed); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for name, c := range map[string]struct {
		dir  func(t *testing.T) string
		want string
	}{
		"nothing installed": {func(t *testing.T) string { return data(t, nil) }, "installed system: no system installed"},
		"other product":     {func(t *testing.T) string { return data(t, other) }, "product"},
		"image missing":     {func(t *testing.T) string { return data(t, good) }, "images"},
		"signed path escapes": {func(t *testing.T) string {
			dir := data(t, good)
			cur, _ := registry.ReadCurrent(dir)
			cur.Signed = "../x.signed"
			b, _ := json.Marshal(cur)
			os.WriteFile(registry.CurrentPath(dir), b, 0o644)
			return dir
		}, "outside the data partition"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := VerifyData(c.dir(t), cas, pid, time.Time{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error naming %q, got %v", c.want, err)
			}
		})
	}
}

func mustPayload(t *testing.T, signed []byte) []byte {
	s, err := trust.ParseSigned(signed)
	if err != nil {
		t.Fatal(err)
	}
	return s.Payload
}

func TestRunHostReport(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"/run/vessel", "/proc", "/etc", "/sys/block/dm-0/dm", "/sys/block/dm-1/dm"} {
		os.MkdirAll(root+d, 0o755)
	}
	rec := BootRecord{Version: 2, Manifest: digest.FromString("m"), Host: "host:1", SwitchRoot: 9.5,
		Layers: []BootLayer{{Digest: "sha256:aa", Verity: "vessel-a"}, {Digest: "sha256:bb", Verity: "vessel-b"}}}
	if err := writeBootRecord(root+BootRecordFile, rec); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(root+"/sys/block/dm-0/dm/name", []byte("vessel-a\n"), 0o644)
	os.WriteFile(root+"/sys/block/dm-1/dm/name", []byte("vessel-b\n"), 0o644)
	os.WriteFile(root+CmdlineFile, []byte("console=ttyS0 vessel.test=root\n"), 0o644)
	table := func(name string) ([]string, error) { return []string{"0 8 verity 1 7:0 7:0 " + name}, nil }
	var out bytes.Buffer
	if err := RunHost(&out, root, func() (float64, error) { return 10.25, nil }, table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"vessel-host: up (manifest " + digest.FromString("m").String() + ", version 2) host host:1, 2 layers, switch_root at 9.500s, uptime 10.250s\n",
		"vessel-host: dm dm-0 vessel-a layer sha256:aa table 0 8 verity 1 7:0 7:0 vessel-a\n",
		"vessel-host: dm dm-1 vessel-b layer sha256:bb table 0 8 verity 1 7:0 7:0 vessel-b\n",
		"vessel-host: root writable (wrote /etc/vessel-host-written; left from an earlier boot: none)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	// A root that kept the file (what a persistent root would do) says so.
	out.Reset()
	if err := RunHost(&out, root, func() (float64, error) { return 11.5, nil }, table); err != nil {
		t.Fatal(err)
	}
	if want := `left from an earlier boot: "written at uptime 10.250s\n")`; !strings.Contains(out.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, out.String())
	}
	// Without vessel.test=root, only the marker.
	os.WriteFile(root+CmdlineFile, []byte("console=ttyS0\n"), 0o644)
	out.Reset()
	if err := RunHost(&out, root, func() (float64, error) { return 1, nil }, table); err != nil || strings.Contains(out.String(), " dm ") {
		t.Fatalf("%v %s", err, out.String())
	}
	os.Remove(root + BootRecordFile)
	if err := RunHost(&out, root, func() (float64, error) { return 1, nil }, table); err == nil || !strings.Contains(err.Error(), "what the initrd verified") {
		t.Fatalf("want an error for a missing boot record, got %v", err)
	}
}

// Without vessel.test= (or with vessel.test=root) the stage goes on to the
// verified boot; other checks make a check-only boot that stops.
func TestRunChoosesVerifiedBoot(t *testing.T) {
	log, pcr := eventLog()
	for cmdline, want := range map[string]string{
		"console=ttyS0":                     "verified boot: this system cannot switch root",
		"console=ttyS0 vessel.test=root":    "verified boot: this system cannot switch root",
		"console=ttyS0 vessel.test=pcr7":    "",
		"vessel.test=pcr7 vessel.test=root": "verified boot",
	} {
		var out bytes.Buffer
		s := &Stage{Console: &out, Version: "v1", Root: root(t, cmdline, pcr, log), sys: &fakeSystem{}}
		err := s.Run()
		if want == "" {
			if err != nil || !strings.Contains(out.String(), "vessel-init: done: check-only boot (vessel.test=pcr7)") {
				t.Errorf("%q: %v\n%s", cmdline, err, out.String())
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: want %q, got %v", cmdline, want, err)
		}
	}
}

func TestParseNet(t *testing.T) {
	nc, ok, err := ParseNet("console=ttyS0 vessel.ip=10.0.2.15/24 quiet")
	if err != nil || !ok || nc.Prefix.String() != "10.0.2.15/24" {
		t.Fatalf("%v %v %v", nc, ok, err)
	}
	if _, ok, err := ParseNet("console=ttyS0"); ok || err != nil {
		t.Fatal("found an address in a command line without vessel.ip=")
	}
	for _, bad := range []string{"vessel.ip=10.0.2.15", "vessel.ip=fe80::1/64", "vessel.ip=x/24"} {
		if _, _, err := ParseNet(bad); err == nil || !strings.Contains(err.Error(), "vessel.ip=") {
			t.Errorf("%s: want an error naming vessel.ip, got %v", bad, err)
		}
	}
	if got := strings.Join(SupervisorArgs("u"), " "); got != "vessel --root /var/lib/vessel up --ca /run/vessel/manifest-ca.pem --product-id u" {
		t.Fatal(got)
	}
}

func TestPowerButton(t *testing.T) {
	ev := func(typ, code uint16, value int32) []byte {
		b := make([]byte, 24)
		binary.LittleEndian.PutUint16(b[16:], typ)
		binary.LittleEndian.PutUint16(b[18:], code)
		binary.LittleEndian.PutUint32(b[20:], uint32(value))
		return b
	}
	for _, c := range []struct {
		ev   []byte
		want bool
	}{
		{ev(1, 116, 1), true},  // EV_KEY KEY_POWER pressed
		{ev(1, 116, 0), false}, // released
		{ev(0, 0, 0), false},   // EV_SYN
		{ev(1, 114, 1), false}, // KEY_VOLUMEDOWN
		{ev(1, 116, 1)[:20], false},
	} {
		if got := IsPowerPress(c.ev); got != c.want {
			t.Errorf("IsPowerPress(% x) = %v, want %v", c.ev, got, c.want)
		}
	}
	// A sysfs fixture: input0 is the power button, input1 a keyboard.
	sys, dev := t.TempDir(), "/dev"
	for n, name := range map[string]string{"input0": "Power Button", "input1": "AT Translated Set 2 keyboard"} {
		d := filepath.Join(sys, "class", "input", n)
		os.MkdirAll(filepath.Join(d, "event"+n[len(n)-1:]), 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644)
	}
	if got := PowerButtons(sys, dev); len(got) != 1 || got[0] != "/dev/input/event0" {
		t.Errorf("PowerButtons = %v, want [/dev/input/event0]", got)
	}
}
