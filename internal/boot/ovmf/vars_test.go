package ovmf

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

func template(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(DefaultTemplate)
	if err != nil {
		t.Skipf("OVMF template missing (apt-get install ovmf): %v", err)
	}
	return b
}

// Debian's snakeoil VARS was enrolled by other tooling (EDK2 itself): the
// reader must find PK, KEK and db there, each a signature list holding the
// snakeoil certificate that Debian ships beside it.
func TestReadSnakeoilVars(t *testing.T) {
	b, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
	if err != nil {
		t.Skipf("snakeoil VARS missing (apt-get install ovmf): %v", err)
	}
	pemb, err := os.ReadFile("/usr/share/ovmf/PkKek-1-snakeoil.pem")
	if err != nil {
		t.Skipf("snakeoil certificate missing: %v", err)
	}
	blk, _ := pem.Decode(pemb)
	snake, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, v := range s.Active() {
		switch v.Name {
		case "PK", "KEK":
			if v.GUID != secureboot.GlobalVariable || v.Attributes&0x27 != 0x27 {
				t.Errorf("%s: guid %s attrs %#x", v.Name, v.GUID, v.Attributes)
			}
			lists, err := secureboot.ParseLists(v.Data)
			if err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			for _, l := range lists {
				for _, sig := range l.Signatures {
					if l.Type == secureboot.CertX509 && bytes.Equal(sig.Data, snake.Raw) {
						found[v.Name] = true
					}
				}
			}
		case "db":
			if v.GUID != secureboot.ImageSecurityDatabase {
				t.Errorf("db guid %s", v.GUID)
			}
			if _, err := secureboot.ParseLists(v.Data); err != nil {
				t.Fatalf("db: %v", err)
			}
			found["db"] = true
		}
	}
	if !found["PK"] || !found["KEK"] || !found["db"] {
		t.Fatalf("snakeoil VARS: found %v among %d variables", found, len(s.Active()))
	}
}

func TestMakeAndReadBack(t *testing.T) {
	tmpl := template(t)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	if _, err := secureboot.Generate(keys, secureboot.GenerateOptions{Org: "Vars Test"}); err != nil {
		t.Fatal(err)
	}
	dbx := filepath.Join(dir, "dbx.txt")
	os.WriteFile(dbx, []byte("# revoked\n"+strings.Repeat("ab", 32)+"\n"+strings.Repeat("cd", 32)+"\n"), 0o644)
	out := filepath.Join(dir, "VARS.fd")
	res, err := Make(MakeOptions{Keys: keys, DBX: dbx, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Variables, ","); got != "PK,KEK,db,dbx,SecureBootEnable,CustomMode" {
		t.Fatalf("variables %s", got)
	}
	b, _ := os.ReadFile(out)
	if len(b) != len(tmpl) {
		t.Fatalf("size %d, template %d", len(b), len(tmpl))
	}
	// Only the variable area changed; the FV and store headers and
	// everything after the store are the template's.
	if !bytes.Equal(b[:0x64], tmpl[:0x64]) || !bytes.Equal(b[0x40000:], tmpl[0x40000:]) {
		t.Fatal("bytes outside the variable area changed")
	}
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if s.Variables[0].Offset != 0x64 {
		t.Fatalf("first variable at %#x, want 0x64", s.Variables[0].Offset)
	}
	for _, role := range []string{"PK", "KEK", "db"} {
		esl, _ := os.ReadFile(filepath.Join(keys, role+".esl"))
		var v *StoredVariable
		for i := range s.Variables {
			if s.Variables[i].Name == role {
				v = &s.Variables[i]
			}
		}
		if v == nil || !bytes.Equal(v.Data, esl) || v.Attributes != 0x27 || v.State != 0x3F {
			t.Fatalf("%s read back: %+v", role, v)
		}
	}
	last := s.Variables[len(s.Variables)-1]
	if last.Name != "CustomMode" || last.GUID != secureboot.CustomModeGUID || !bytes.Equal(last.Data, []byte{0}) || last.Attributes != 3 {
		t.Fatalf("CustomMode: %+v", last)
	}
	dbxLists, err := secureboot.ParseLists(s.Variables[3].Data)
	if err != nil || len(dbxLists) != 1 || dbxLists[0].Type != secureboot.CertSHA256 || len(dbxLists[0].Signatures) != 2 {
		t.Fatalf("dbx: %v %+v", err, dbxLists)
	}
	// The written file is not empty any more: refused as a template.
	if _, err := Make(MakeOptions{Keys: keys, Template: out, Output: filepath.Join(dir, "again.fd")}); err == nil ||
		!strings.Contains(err.Error(), "not empty") {
		t.Fatalf("non-empty template: %v", err)
	}
}

func TestRejectsBadTemplates(t *testing.T) {
	tmpl := template(t)
	bad := map[string][]byte{
		"short":                 tmpl[:0x50],
		"code image":            nil,
		"zeroes":                make([]byte, len(tmpl)),
		"wrong checksum":        append([]byte(nil), tmpl...),
		"garbage in free space": append([]byte(nil), tmpl...),
	}
	bad["wrong checksum"][0x32] ^= 0xff
	bad["garbage in free space"][0x1000] = 0
	if code, err := os.ReadFile("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"); err == nil {
		bad["code image"] = code
	} else {
		delete(bad, "code image")
	}
	for name, b := range bad {
		if _, err := Write(b, nil); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// A store that is too small for the keys says so.
	s, err := Parse(append([]byte(nil), tmpl...))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(secureboot.Variable{Name: "big", Data: make([]byte, s.Free())}); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("oversized variable: %v", err)
	}
}

func TestDBXInputs(t *testing.T) {
	owner := secureboot.MustGUID("11111111-2222-3333-4444-555555555555")
	esl, err := secureboot.ParseDBX([]byte(strings.Repeat("00", 32)+"\n"), owner)
	if err != nil {
		t.Fatal(err)
	}
	again, err := secureboot.ParseDBX(esl, owner) // an ESL passes through
	if err != nil || !bytes.Equal(again, esl) {
		t.Fatalf("ESL dbx: %v", err)
	}
	for _, bad := range []string{"", "nothex\n", strings.Repeat("00", 31) + "\n"} {
		if _, err := secureboot.ParseDBX([]byte(bad), owner); err == nil {
			t.Errorf("dbx %q accepted", bad)
		}
	}
}
