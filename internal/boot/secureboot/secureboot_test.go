package secureboot

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

var testNow = time.Date(2026, 12, 1, 10, 20, 30, 0, time.UTC)

func generate(t *testing.T) (string, *Files) {
	t.Helper()
	dir := t.TempDir()
	f, err := Generate(dir, GenerateOptions{Org: "Test Org", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	return dir, f
}

func TestGUIDByteOrder(t *testing.T) {
	g := MustGUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
	want := []byte{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}
	if !bytes.Equal(g[:], want) {
		t.Fatalf("GUID bytes %x, want %x", g[:], want)
	}
	if g.String() != "8be4df61-93ca-11d2-aa0d-00e098032b8c" {
		t.Fatalf("String() = %s", g)
	}
	n, err := NewGUID()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ParseGUID(n.String()); err != nil || back != n {
		t.Fatalf("round trip %s: %v %s", n, err, back)
	}
	for _, bad := range []string{"", "8be4df61-93ca-11d2-aa0d", "zze4df61-93ca-11d2-aa0d-00e098032b8c"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) accepted", bad)
		}
	}
}

func TestGenerateRefusesOverwrite(t *testing.T) {
	dir, f := generate(t)
	if _, err := Generate(dir, GenerateOptions{Org: "Test Org"}); err == nil {
		t.Fatal("second Generate without Force succeeded")
	}
	before, _ := os.ReadFile(f.Keys[DB].Cert)
	if _, err := Generate(dir, GenerateOptions{Org: "Test Org", Force: true}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.Keys[DB].Cert)
	if bytes.Equal(before, after) {
		t.Fatal("Force did not replace db.crt")
	}
	if st, err := os.Stat(f.Keys[PK].Key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("PK.key mode: %v %v", st.Mode(), err)
	}
	ks, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ks.DB.Cert.Subject.CommonName != "Test Org Secure Boot db" {
		t.Fatalf("db subject %q", ks.DB.Cert.Subject.CommonName)
	}
	if _, err := Generate(t.TempDir(), GenerateOptions{}); err == nil {
		t.Fatal("Generate without an organisation succeeded")
	}
}

// The .esl files must be byte-identical to efitools' cert-to-efi-sig-list
// with the same owner GUID.
func TestESLMatchesEfitools(t *testing.T) {
	if _, err := exec.LookPath("cert-to-efi-sig-list"); err != nil {
		t.Skip("efitools not installed (apt-get install efitools): cert-to-efi-sig-list missing")
	}
	dir, f := generate(t)
	for _, role := range []string{PK, KEK, DB} {
		out := filepath.Join(t.TempDir(), role+".esl")
		cmd := exec.Command("cert-to-efi-sig-list", "-g", f.Owner.String(), f.Keys[role].Cert, out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cert-to-efi-sig-list: %v\n%s", err, b)
		}
		want, _ := os.ReadFile(out)
		got, _ := os.ReadFile(filepath.Join(dir, role+".esl"))
		if !bytes.Equal(got, want) {
			t.Errorf("%s.esl differs from cert-to-efi-sig-list output (%d vs %d bytes)", role, len(got), len(want))
		}
		lists, err := ParseLists(got)
		if err != nil || len(lists) != 1 || lists[0].Signatures[0].Owner != f.Owner {
			t.Errorf("%s.esl parsed back: %v %+v", role, err, lists)
		}
	}
}

// The .auth files must be byte-identical to efitools' sign-efi-sig-list with
// the same timestamp (RSA PKCS#1 v1.5 is deterministic), and accepted by
// openssl as a detached signature over the EFI_VARIABLE_AUTHENTICATION_2
// message.
func TestAuthMatchesEfitools(t *testing.T) {
	if _, err := exec.LookPath("sign-efi-sig-list"); err != nil {
		t.Skip("efitools not installed (apt-get install efitools): sign-efi-sig-list missing")
	}
	dir, f := generate(t)
	signer := map[string]string{PK: PK, KEK: PK, DB: KEK}
	for _, role := range []string{PK, KEK, DB} {
		out := filepath.Join(t.TempDir(), role+".auth")
		s := f.Keys[signer[role]]
		cmd := exec.Command("sign-efi-sig-list", "-g", f.Owner.String(), "-t", testNow.Format("2006-01-02 15:04:05"),
			"-k", s.Key, "-c", s.Cert, role, f.Keys[role].ESL, out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sign-efi-sig-list: %v\n%s", err, b)
		}
		want, _ := os.ReadFile(out)
		got, _ := os.ReadFile(filepath.Join(dir, role+".auth"))
		if !bytes.Equal(got, want) {
			t.Errorf("%s.auth differs from sign-efi-sig-list output (%d vs %d bytes)", role, len(got), len(want))
		}
	}
}

// openssl checks each .auth signature as a detached PKCS#7 over the
// authenticated-variable message, under the expected signer only.
func TestAuthVerifiesWithOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir, f := generate(t)
	guids := map[string]GUID{PK: GlobalVariable, KEK: GlobalVariable, DB: ImageSecurityDatabase}
	signer := map[string]string{PK: PK, KEK: PK, DB: KEK}
	for _, role := range []string{PK, KEK, DB} {
		b, err := os.ReadFile(filepath.Join(dir, role+".auth"))
		if err != nil {
			t.Fatal(err)
		}
		u, err := ParseSignedUpdate(b)
		if err != nil {
			t.Fatal(err)
		}
		esl, _ := os.ReadFile(f.Keys[role].ESL)
		if !bytes.Equal(u.Data, esl) || !u.Time.Equal(testNow) {
			t.Fatalf("%s.auth: data or time differ (%v)", role, u.Time)
		}
		tmp := t.TempDir()
		p7 := filepath.Join(tmp, "sig.p7")
		msg := filepath.Join(tmp, "msg")
		os.WriteFile(p7, wrapForTest(u.SignedData), 0o644)
		os.WriteFile(msg, u.Message(role, guids[role], AttrsSecureBootKey), 0o644)
		verify := func(cert string) error {
			out, err := exec.Command("openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", p7,
				"-content", msg, "-CAfile", cert, "-purpose", "any", "-no_check_time", "-out", os.DevNull).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		}
		if err := verify(f.Keys[signer[role]].Cert); err != nil {
			t.Errorf("%s.auth: openssl rejects the signature by %s: %v", role, signer[role], err)
		}
		if err := verify(f.Keys[DB].Cert); err == nil && signer[role] != DB {
			t.Errorf("%s.auth: openssl accepts it under db.crt", role)
		}
	}
}
