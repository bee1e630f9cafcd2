//go:build tpmsim

package attest_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/attest/attesttest"
	"github.com/vesselos/vessel/internal/boot/tcglog"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

func simTPM(t testing.TB) *tpm.TPM {
	t.Helper()
	_, tp := simulatorTPM(t)
	return tp
}

// simulatorTPM starts the reference TPM simulator (fresh: manufactured).
func simulatorTPM(t testing.TB) (*simulator.Simulator, *tpm.TPM) {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim, tpm.New(transport.FromReadWriter(sim), nil, "simulator")
}

// refused checks that err is an *attest.Error wrapping sentinel and that
// the named check's detail mentions why.
func refused(t *testing.T, r *attest.Report, err error, sentinel error, check, why string) {
	t.Helper()
	if err == nil {
		t.Fatalf("verified, want refusal %q", sentinel)
	}
	var ae *attest.Error
	if !errors.As(err, &ae) || !errors.Is(err, sentinel) {
		t.Fatalf("error %v, want %q", err, sentinel)
	}
	if r == nil || r.OK {
		t.Fatalf("report says OK with error %v", err)
	}
	for _, c := range ae.Failed {
		if c.Name == check {
			if !strings.Contains(c.Detail, why) {
				t.Fatalf("check %s: %q does not say %q", check, c.Detail, why)
			}
			return
		}
	}
	t.Fatalf("error %v does not name check %s", err, check)
}

func TestQuoteVerify(t *testing.T) {
	tp := simTPM(t)
	k := attesttest.NewKeys(t, "Acme")
	m := attesttest.Boot(t, tp, k, true)
	n := attesttest.Nonce(t)
	q := m.Quote(t, n)
	pol := k.Policy()
	pol.AllowManifests = []string{strings.TrimPrefix(m.Digest, "sha256:")}
	pol.UKISigners = []*x509.Certificate{m.UKICert}

	t.Run("good", func(t *testing.T) {
		r, err := attest.Verify(q, n, pol)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if !r.OK || r.MachineID != m.MachineID || r.ProductID != k.PID || !r.SecureBoot || !r.Locked {
			t.Fatalf("report %+v", r)
		}
		if len(r.UKISigners) != 1 || r.UKISigners[0] != m.UKICert.Subject.String() {
			t.Fatalf("UKI signers %v, want %s", r.UKISigners, m.UKICert.Subject)
		}
		if r.Manifest == nil || r.Manifest.Digest != m.Digest || r.Manifest.Version != 7 || r.Manifest.Signer == "" {
			t.Fatalf("manifest %+v, want %s version 7", r.Manifest, m.Digest)
		}
		// The PCRs the quote carries are the TPM's.
		for _, n := range attest.PCRs {
			v, err := tp.PCR(n)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(v, q.PCRs[n]) {
				t.Fatalf("PCR %d: quote %x, TPM %x", n, []byte(q.PCRs[n]), v)
			}
		}
	})

	t.Run("identity certificate of another key", func(t *testing.T) {
		other := attesttest.CSR(t, attesttest.NewECKey(t))
		_, err := attest.Make(attest.MakeOptions{TPM: tp, State: m.State, IdentityCert: k.IdentityCert(t, other, k.PID, "m-0009"),
			Nonce: n, FirmwareLog: m.FirmwareLog, VesselLog: m.VesselLog})
		if err == nil || !strings.Contains(err.Error(), "is not for this TPM's identity key") {
			t.Fatalf("quote with another machine's certificate: %v", err)
		}
	})

	t.Run("replayed quote (old nonce)", func(t *testing.T) {
		r, err := attest.Verify(q, attesttest.Nonce(t), pol)
		refused(t, r, err, attest.ErrNonce, "nonce", "quote nonce")
	})

	t.Run("firmware log does not replay", func(t *testing.T) {
		l, err := tcglog.Parse(q.FirmwareLog)
		if err != nil {
			t.Fatal(err)
		}
		// Drop PCR7's last event: the UKI's db authority (a log that hides
		// which key verified the boot image).
		for i := len(l.Events) - 1; i >= 0; i-- {
			if l.Events[i].PCR == 7 {
				l.Events = append(l.Events[:i], l.Events[i+1:]...)
				break
			}
		}
		bad := *q
		bad.FirmwareLog = l.Marshal()
		r, err := attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrReplay, "replay", "PCR 7 is")
	})

	t.Run("vessel log does not replay", func(t *testing.T) {
		// Another manifest, with a correct line hash: only the replay catches it.
		other := m.Measured
		other.Digest = "sha256:" + strings.Repeat("ab", 32)
		b := jsonl(t, measure.ManifestEvent(other), measure.NewEvent(7, measure.TypeLock, tpm.LockEvent))
		bad := *q
		bad.VesselLog = b
		r, err := attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrReplay, "replay", "vessel's log replays")
		// Without the lock event, PCR7 no longer replays.
		bad.VesselLog = jsonl(t, measure.ManifestEvent(m.Measured))
		r, err = attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrReplay, "replay", "PCR 7 is")
	})

	t.Run("AK not certified by the identity key", func(t *testing.T) {
		// A second AK in the same TPM, with the first AK's certification.
		st2 := tpm.State{Dir: t.TempDir()}
		for _, f := range []string{"state.json", "identity.key"} {
			b, err := os.ReadFile(filepath.Join(m.State.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(st2.Dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		id2, err := tp.Identity(st2, m.Policy, nil)
		if err != nil {
			t.Fatal(err)
		}
		// After the lock the identity key still certifies (its identity
		// approval for the locked PCR7): a second, certified AK.
		ak2, err := tp.AttestationKey(st2, id2)
		if err != nil {
			t.Fatalf("certify after the lock: %v", err)
		}
		if bytes.Equal(ak2.Blob.Public, q.AKPublic) {
			t.Fatal("the second AK is the first")
		}
		// An AK certified by another key (software key, signature over the real certification).
		bad := *q
		other := attesttest.NewECKey(t)
		sum := sha256.Sum256(bad.AKCertification)
		sig, err := other.Sign(rand.Reader, sum[:], nil)
		if err != nil {
			t.Fatal(err)
		}
		bad.AKSignature = sig
		r, err := attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrAK, "ak", "not signed by the identity key")
		// An uncertified AK in place of the certified one.
		st2.Dir = t.TempDir()
		b, _ := os.ReadFile(filepath.Join(m.State.Dir, "state.json"))
		if err := os.WriteFile(filepath.Join(st2.Dir, "state.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		ak3 := makeUncertifiedAK(t, tp, st2, q)
		q2, err := tp.Quote(st2, ak3, n, attest.PCRs)
		if err != nil {
			t.Fatal(err)
		}
		bad = *q
		bad.AKPublic, bad.Quote, bad.QuoteSignature, bad.PCRs = ak3.Blob.Public, q2.Attest, q2.Signature, q2.PCRs
		r, err = attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrAK, "ak", "not this AK")
	})

	t.Run("identity of another product", func(t *testing.T) {
		// Same machine, same CA, a certificate for another product's ID.
		bad := *q
		bad.Identity = string(k.IdentityCert(t, m.CSR, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", m.MachineID))
		r, err := attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrProduct, "product", "identity certificate is of product 6ba7b810-9dad-11d1-80b4-00c04fd430c8")
	})

	t.Run("identity from another CA", func(t *testing.T) {
		other := attesttest.NewKeys(t, "Evil")
		bad := *q
		bad.Identity = string(other.IdentityCert(t, m.CSR, k.PID, m.MachineID))
		r, err := attest.Verify(&bad, n, pol)
		refused(t, r, err, attest.ErrIdentity, "identity", "unknown authority")
	})

	t.Run("manifest not on the allow list", func(t *testing.T) {
		p := pol
		p.AllowManifests = []string{"sha256:" + strings.Repeat("01", 32)}
		r, err := attest.Verify(q, n, p)
		refused(t, r, err, attest.ErrNotAllowed, "allow-list", m.Digest+" (version 7) is not allowed")
		if r.Manifest == nil || r.Manifest.Digest != m.Digest {
			t.Fatalf("report does not name the running manifest: %+v", r.Manifest)
		}
	})

	t.Run("manifest of another CA", func(t *testing.T) {
		p := pol
		p.ManifestCAs = []*x509.Certificate{attesttest.NewKeys(t, "Evil").ManifestCA}
		r, err := attest.Verify(q, n, p)
		refused(t, r, err, attest.ErrManifestCA, "manifest-ca", "certificate chain")
	})

	t.Run("UKI signed by another db key", func(t *testing.T) {
		p := pol
		p.UKISigners = []*x509.Certificate{k.ManifestCA} // any other certificate
		r, err := attest.Verify(q, n, p)
		refused(t, r, err, attest.ErrSigner, "uki-signer", "vmtest pcr7 Secure Boot db")
	})

	t.Run("every mismatch named", func(t *testing.T) {
		p := pol
		p.AllowManifests = []string{"sha256:" + strings.Repeat("01", 32)}
		p.ProductID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
		_, err := attest.Verify(q, n, p)
		if !errors.Is(err, attest.ErrNotAllowed) || !errors.Is(err, attest.ErrProduct) {
			t.Fatalf("error %v, want both the allow list and the product", err)
		}
	})
}

// makeUncertifiedAK creates an AK in st2 with no certification by the
// identity key, the way malware with TPM access could.
func makeUncertifiedAK(t *testing.T, tp *tpm.TPM, st2 tpm.State, q *attest.Quote) *tpm.AK {
	t.Helper()
	b, err := tp.CreateAK(st2)
	if err != nil {
		t.Fatal(err)
	}
	return &tpm.AK{Blob: b, Certification: q.AKCertification, Signature: q.AKSignature}
}

func jsonl(t *testing.T, evs ...measure.Event) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "l.jsonl")
	for _, ev := range evs {
		if err := (measure.Log{Path: p}).Append(ev); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var update = flag.Bool("attest.update", false, "rewrite testdata/ (the fuzz seed: a genuine quote and its policy)")

// TestWriteSeed writes testdata/quote.json, testdata/machine-ca.pem,
// testdata/manifest-ca.pem, testdata/db.pem and testdata/nonce: a genuine
// quote from the simulator that FuzzVerify starts from (-attest.update).
func TestWriteSeed(t *testing.T) {
	if !*update {
		t.Skip("run with -attest.update to rewrite testdata/")
	}
	tp := simTPM(t)
	k := attesttest.NewKeys(t, "Acme")
	m := attesttest.Boot(t, tp, k, true)
	n := attesttest.Nonce(t)
	b, err := m.Quote(t, n).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"quote.json": b, "machine-ca.pem": trust.PEMCerts(k.MachineCA), "manifest-ca.pem": trust.PEMCerts(k.ManifestCA),
		"db.pem": trust.PEMCerts(m.UKICert), "nonce": []byte(hex.EncodeToString(n) + "\n"),
	} {
		if err := os.WriteFile(filepath.Join("testdata", name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
