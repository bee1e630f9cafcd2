package tpm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"
)

// keySigners returns the signers the key benchmarks compare: PEM (in
// memory) ECDSA P-256 and RSA 2048 keys, and TPM keys of the same kinds on
// one swtpm, each signature a load-sign-flush.
func keySigners(t testing.TB) (names []string, signers []crypto.Signer) {
	sw := startSwtpm(t)
	tp, err := Open(sw.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	if _, err := tp.Provision(State{Dir: t.TempDir()}, &newKey(t).PublicKey, ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	names = append(names, "pem-ecdsa-p256", "pem-rsa-2048")
	signers = append(signers, newKey(t), rk)
	for _, o := range []KeyOptions{{}, {RSA: true}} {
		b, err := tp.CreateKey(o)
		if err != nil {
			t.Fatal(err)
		}
		kf, err := ParseKeyFile(b)
		if err != nil {
			t.Fatal(err)
		}
		s, err := tp.Signer(kf, nil)
		if err != nil {
			t.Fatal(err)
		}
		signers = append(signers, s)
	}
	names = append(names, "tpm-ecdsa-p256", "tpm-rsa-2048")
	return names, signers
}

// BenchmarkKeySign: signatures over a SHA-256 digest, PEM keys against
// TPM-held keys on swtpm.
func BenchmarkKeySign(b *testing.B) {
	names, signers := keySigners(b)
	d := sha256.Sum256([]byte("manifest"))
	for i, s := range signers {
		b.Run(names[i], func(b *testing.B) {
			for n := 0; n < b.N; n++ {
				if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestKeySignRate prints signatures per second with PEM and TPM keys in
// one run and the ratio (bench/tpm.sh). Measurement only: it runs with
// -tpm.bench and asserts nothing about the timings.
func TestKeySignRate(t *testing.T) {
	if !*compare {
		t.Skip("measurement: run with -tpm.bench (bench/tpm.sh)")
	}
	names, signers := keySigners(t)
	d := sha256.Sum256([]byte("manifest"))
	rate := make([]float64, len(signers))
	for i, s := range signers {
		n, start := 0, time.Now()
		for time.Since(start) < 2*time.Second || n < 20 {
			if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				t.Fatal(err)
			}
			n++
		}
		rate[i] = float64(n) / time.Since(start).Seconds()
		fmt.Printf("%-16s %9.0f signatures/s (%d in %.2fs)\n", names[i], rate[i], n, float64(n)/rate[i])
	}
	fmt.Printf("ECDSA P-256: PEM key %.0fx faster than the TPM key (swtpm, load-sign-flush per signature)\n", rate[0]/rate[2])
	fmt.Printf("RSA 2048:    PEM key %.0fx faster than the TPM key (swtpm, load-sign-flush per signature)\n", rate[1]/rate[3])
}
