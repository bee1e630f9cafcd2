package tpm

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

func TestRecoveryRoundTrip(t *testing.T) {
	b, err := randomAuth(20)
	if err != nil {
		t.Fatal(err)
	}
	s := formatRecovery(b)
	if len(s) != 39 {
		t.Fatalf("recovery %q: want 8 groups of 4", s)
	}
	got, err := ParseRecovery(" " + s[:10] + " " + s[10:] + "\n")
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("ParseRecovery = %x, %v; want %x", got, err, b)
	}
	if _, err := ParseRecovery("AAAA"); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestPolicyFileChecks(t *testing.T) {
	k := mustKey(t)
	pcr := sha256.Sum256([]byte("pcr7"))
	p, err := SignPolicy(k, pcr[:], 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePolicy(p.Marshal()); err != nil {
		t.Fatal(err)
	}
	// Changing the version without re-signing is caught before the TPM.
	q := *p
	q.Version = 4
	if _, err := ParsePolicy(q.Marshal()); err == nil {
		t.Fatal("policy with a changed version accepted")
	}
	q = *p
	q.Format = "other"
	if _, err := ParsePolicy(q.Marshal()); err == nil {
		t.Fatal("unknown format accepted")
	}
}

// FuzzParsePolicy: policy files are untrusted input.
func FuzzParsePolicy(f *testing.F) {
	k := mustKey(f)
	pcr := sha256.Sum256([]byte("pcr7"))
	p, err := SignPolicy(k, pcr[:], 1)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(p.Marshal())
	f.Add([]byte(`{"format":"vessel-tpm-policy/v1","pcr7":"00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if q, err := ParsePolicy(b); err == nil {
			if _, err := tpmSignature(q.Signature); err != nil {
				t.Fatalf("accepted policy has an unusable signature: %v", err)
			}
		}
	})
}
