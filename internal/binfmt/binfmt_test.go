package binfmt

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const aarch64Conf = `:qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF`

func TestParseConf(t *testing.T) {
	e, err := ParseConf(aarch64Conf)
	if err != nil {
		t.Fatal(err)
	}
	if e.Arch != "arm64" || e.Type != "M" || len(e.Magic) != 20 || len(e.Mask) != 20 || e.Flags != "OPF" || e.Ours {
		t.Fatalf("parsed %+v", e)
	}
	back, err := ParseConf(e.Line())
	if err != nil || back.MagicHex() != e.MagicHex() || back.Interpreter != e.Interpreter {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, bad := range []string{"", ":x:M::abc", ":x:Q::a::/bin/x:", ":register:M::a::/bin/x:", `:x:M::\x7:\xff:/bin/x:F`, ":x:M::ab:f:/bin/x:F"} {
		if _, err := ParseConf(bad); err == nil {
			t.Errorf("ParseConf(%q): no error", bad)
		}
	}
}

// Every rule Debian ships parses, and the ones for architectures vessel
// knows are recognized as those architectures.
func TestDebianRules(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(ConfDir, "qemu-*.conf"))
	if len(files) == 0 {
		t.Skipf("no %s/qemu-*.conf: %s is not installed", ConfDir, Package)
	}
	want := map[string]string{"qemu-aarch64.conf": "arm64", "qemu-arm.conf": "arm", "qemu-s390x.conf": "s390x",
		"qemu-riscv64.conf": "riscv64", "qemu-ppc64le.conf": "ppc64le", "qemu-mips64el.conf": "mips64le"}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		e, err := ParseConf(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if a, ok := want[filepath.Base(f)]; ok && e.Arch != a {
			t.Errorf("%s: arch %q, want %s", f, e.Arch, a)
		}
	}
}

func TestParseProc(t *testing.T) {
	e, err := parseProc("vessel-qemu-aarch64", "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: F\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")
	if err != nil {
		t.Fatal(err)
	}
	if !e.Enabled || !e.Ours || e.Arch != "arm64" || !e.HasFlag('F') || e.Interpreter != "/usr/bin/qemu-aarch64-static" {
		t.Fatalf("parsed %+v", e)
	}
	if j, err := json.Marshal(e); err != nil || !strings.Contains(string(j), `"magic":"7f454c460201010000000000000000000200b700","mask":"ffffffffffffff00fffffffffffffffffeffffff"`) || !strings.Contains(string(j), `"name":"vessel-qemu-aarch64"`) {
		t.Errorf("json: %s %v", j, err)
	}
	st := &Status{Mounted: true, Enabled: true, Entries: []Entry{e}}
	if _, ok := st.Handler("arm64"); !ok {
		t.Error("no handler for arm64")
	}
	if _, ok := st.Handler("riscv64"); ok {
		t.Error("arm64 entry handles riscv64")
	}
	e.Flags = "OP"
	st.Entries[0] = e
	if _, ok := st.Handler("arm64"); ok {
		t.Error("an entry without F counts as a handler")
	}
	x, err := parseProc("py", "enabled\ninterpreter /usr/bin/python3\nflags: \nextension .pyc\n")
	if err != nil || x.Type != "E" || x.Extension != "pyc" || x.Arch != "" {
		t.Fatalf("extension entry: %+v, %v", x, err)
	}
	if _, err := parseProc("bad", "enabled\nfrobnicate 1\n"); err == nil {
		t.Error("unknown line accepted")
	}
}

func TestPlan(t *testing.T) {
	conf, bin := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(conf, "qemu-aarch64.conf"), []byte("# comment\n"+aarch64Conf+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Plan([]string{"arm64"}, conf, bin)
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install qemu-user-static") {
		t.Fatalf("Plan without the emulator: %v", err)
	}
	if err := os.WriteFile(filepath.Join(bin, "qemu-aarch64-static"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	es, err := Plan([]string{"aarch64", "amd64"}, conf, bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Name != "vessel-qemu-aarch64" || es[0].Flags != "F" || es[0].Interpreter != filepath.Join(bin, "qemu-aarch64-static") {
		t.Fatalf("plan %+v", es)
	}
	if !strings.HasPrefix(es[0].Line(), `:vessel-qemu-aarch64:M:0:\x7f\x45\x4c\x46\x02`) || !strings.HasSuffix(es[0].Line(), ":F") {
		t.Fatalf("line %s", es[0].Line())
	}
	if _, err := Plan([]string{"sparc"}, conf, bin); err == nil {
		t.Error("unknown arch planned")
	}
}

// TestRoundTrip registers riscv64 in the kernel and removes only vessel's
// entry, leaving binfmt_misc as it found it. (riscv64: the build and run
// tests, which may run at the same time, use arm64.)
func TestRoundTrip(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("registering binfmt_misc entries needs root")
	}
	es, err := Plan([]string{"riscv64"}, "", "")
	if errors.Is(err, ErrNotInstalled) {
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	before, err := Read("")
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := before.Handler("riscv64"); ok && !h.Ours {
		t.Skipf("riscv64 is already handled by %s, not vessel's: the round trip would change nothing", h.Name)
	}
	hadOurs := slices.ContainsFunc(before.Entries, func(e Entry) bool { return e.Name == es[0].Name })
	if err := mountBinfmt(Dir); err != nil {
		t.Fatal(err)
	}
	// Someone else's entry, which Remove must leave alone.
	b := make([]byte, 4)
	rand.Read(b)
	other := Entry{Name: "xarchtest-" + hex.EncodeToString(b), Type: "E", Extension: "vx" + hex.EncodeToString(b), Interpreter: "/bin/true"}
	if err := os.WriteFile(filepath.Join(Dir, "register"), []byte(other.Line()), 0); err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(filepath.Join(Dir, other.Name), []byte("-1"), 0)
	defer func() {
		if hadOurs {
			Install("", es)
		}
	}()
	if _, err := Remove("", []string{"riscv64"}); err != nil {
		t.Fatal(err)
	}
	if err := Check("riscv64"); !errors.Is(err, ErrNotRegistered) || !strings.Contains(err.Error(), "register an emulator for riscv64") {
		t.Fatalf("Check before install: %v", err)
	}
	res, err := Install("", es)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Action != "registered" {
		t.Fatalf("install: %+v", res)
	}
	if res, err = Install("", es); err != nil || res[0].Action != "present" {
		t.Fatalf("second install: %+v, %v", res, err)
	}
	if err := Check("riscv64"); err != nil {
		t.Fatalf("Check after install: %v", err)
	}
	st, err := Read("")
	if err != nil {
		t.Fatal(err)
	}
	h, ok := st.Handler("riscv64")
	if !ok || h.Name != "vessel-qemu-riscv64" || h.Flags != "F" || !h.Ours {
		t.Fatalf("status after install: %+v", st.Entries)
	}
	// The kernel's own words (cat), not our parser.
	out, err := exec.Command("cat", filepath.Join(Dir, "vessel-qemu-riscv64")).Output()
	if err != nil || !strings.Contains(string(out), "interpreter /usr/bin/qemu-riscv64-static\nflags: F\n") || !strings.HasPrefix(string(out), "enabled\n") {
		t.Fatalf("kernel entry: %q, %v", out, err)
	}
	res, err = Remove("", []string{"riscv64"})
	if err != nil || len(res) != 1 || res[0].Entry.Name != "vessel-qemu-riscv64" {
		t.Fatalf("remove: %+v, %v", res, err)
	}
	st, err = Read("")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, e := range st.Entries {
		names = append(names, e.Name)
	}
	if slices.Contains(names, "vessel-qemu-riscv64") || !slices.Contains(names, other.Name) {
		t.Fatalf("after remove: %v (want ours gone, %s kept)", names, other.Name)
	}
}

// TestInstallRemoveFakeDir runs Install and Remove against a directory laid
// out like binfmt_misc (no root needed): an architecture another F entry
// handles is left alone, the others are registered with the exact line,
// and Remove writes -1 only to vessel's entries.
func TestInstallRemoveFakeDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("status", "enabled\n")
	write("register", "")
	debian := "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: OPF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n"
	write("qemu-aarch64", debian)
	write("vessel-qemu-s390x", "enabled\ninterpreter /usr/bin/qemu-s390x-static\nflags: F\noffset 0\nmagic 7f454c4602020100000000000000000000020016\nmask ffffffffffffff00fffffffffffffffffffeffff\n")
	conf, bin := t.TempDir(), t.TempDir()
	riscv := `:qemu-riscv64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/riscv64-binfmt-P:OPF`
	for name, text := range map[string]string{"qemu-aarch64.conf": aarch64Conf, "qemu-riscv64.conf": riscv} {
		if err := os.WriteFile(filepath.Join(conf, name), []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []string{"aarch64", "riscv64"} {
		if err := os.WriteFile(filepath.Join(bin, "qemu-"+m+"-static"), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	es, err := Plan([]string{"arm64", "riscv64"}, conf, bin)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Install(dir, es)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Action != "handled" || res[0].By != "qemu-aarch64" || res[1].Action != "registered" {
		t.Fatalf("install: %+v", res)
	}
	reg, _ := os.ReadFile(filepath.Join(dir, "register"))
	want := `:vessel-qemu-riscv64:M:0:\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:` + filepath.Join(bin, "qemu-riscv64-static") + `:F`
	if string(reg) != want {
		t.Fatalf("register got\n%s\nwant\n%s", reg, want)
	}
	res, err = Remove(dir, nil)
	if err != nil || len(res) != 1 || res[0].Entry.Name != "vessel-qemu-s390x" || res[0].Entry.Arch != "s390x" {
		t.Fatalf("remove: %+v, %v", res, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "vessel-qemu-s390x")); string(b) != "-1" {
		t.Errorf("vessel's entry got %q, want -1", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "qemu-aarch64")); string(b) != debian {
		t.Errorf("Debian's entry was touched: %q", b)
	}
}
