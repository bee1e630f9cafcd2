package attest_test

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/boot/tcglog"
	"github.com/vesselos/vessel/internal/trust"
)

// seed is testdata/: a genuine quote made on the reference TPM simulator
// (TestWriteSeed -attest.update), its nonce and the policy that admits it.
func seed(t testing.TB) ([]byte, []byte, attest.Policy) {
	t.Helper()
	q, err := os.ReadFile("testdata/quote.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("testdata/nonce")
	if err != nil {
		t.Fatal(err)
	}
	n, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// The certificates were issued on 2026-12-02 (the product certificate
	// lasts 2 years): verify at a fixed time so the test does not expire.
	pol := attest.Policy{At: time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)}
	for p, dst := range map[string]*[]*x509.Certificate{
		"testdata/machine-ca.pem": &pol.MachineCAs, "testdata/manifest-ca.pem": &pol.ManifestCAs, "testdata/db.pem": &pol.UKISigners,
	} {
		cs, err := trust.LoadCerts(p)
		if err != nil {
			t.Fatal(err)
		}
		*dst = cs
	}
	return q, n, pol
}

// TestKnownQuote verifies the stored genuine quote (no TPM needed) and
// refuses it after single-byte changes to each signed part.
func TestKnownQuote(t *testing.T) {
	b, n, pol := seed(t)
	q, err := attest.ParseQuote(b)
	if err != nil {
		t.Fatal(err)
	}
	r, err := attest.Verify(q, n, pol)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if r.MachineID != "m-0001" || !r.SecureBoot || !r.Locked || r.Manifest == nil || r.Manifest.Version != 7 {
		t.Fatalf("report %+v", r)
	}
	for _, c := range []struct {
		name     string
		edit     func(q *attest.Quote)
		sentinel error
	}{
		{"quote", func(q *attest.Quote) { q.Quote[len(q.Quote)-1] ^= 1 }, attest.ErrSignature},
		{"quote signature", func(q *attest.Quote) { q.QuoteSignature[len(q.QuoteSignature)-1] ^= 1 }, attest.ErrSignature},
		{"PCR 15 value", func(q *attest.Quote) { q.PCRs[15][0] ^= 1 }, attest.ErrSignature},
		{"AK public", func(q *attest.Quote) { q.AKPublic[len(q.AKPublic)-1] ^= 1 }, attest.ErrAK},
		{"AK certification", func(q *attest.Quote) { q.AKCertification[len(q.AKCertification)-1] ^= 1 }, attest.ErrAK},
		{"firmware log digest", func(q *attest.Quote) {
			l, err := tcglog.Parse(q.FirmwareLog)
			if err != nil {
				t.Fatal(err)
			}
			l.Events[1].Digests[tcglog.AlgSHA256][0] ^= 1
			q.FirmwareLog = l.Marshal()
		}, attest.ErrReplay},
		{"identity", func(q *attest.Quote) { q.Identity = strings.Replace(q.Identity, "MII", "MIJ", 1) }, attest.ErrIdentity},
	} {
		q, err := attest.ParseQuote(b)
		if err != nil {
			t.Fatal(err)
		}
		c.edit(q)
		if _, err := attest.Verify(q, n, pol); !errors.Is(err, c.sentinel) {
			t.Errorf("%s changed: %v, want %v", c.name, err, c.sentinel)
		}
	}
}

// FuzzVerify feeds arbitrary quote files to ParseQuote and Verify: neither
// may panic, and nothing may verify for another machine or manifest than
// the genuine quote's.
func FuzzVerify(f *testing.F) {
	b, n, pol := seed(f)
	f.Add(b)
	f.Add([]byte(`{"format":"vessel-attest-quote/v1","akPublic":"00","quote":"ff544347","pcrs":{"0":"00"}}`))
	f.Add([]byte(`{"format":"vessel-attest-quote/v1","firmwareLog":"AAAAAAMAAAA=","vesselLog":"{\"pcr\":15}\n"}`))
	want, err := attest.ParseQuote(b)
	if err != nil {
		f.Fatal(err)
	}
	r0, err := attest.Verify(want, n, pol)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := attest.ParseQuote(data)
		if err != nil {
			return
		}
		r, err := attest.Verify(q, n, pol)
		if err != nil {
			return
		}
		if r.MachineID != r0.MachineID || r.Manifest.Digest != r0.Manifest.Digest || r.PCRs[15] != r0.PCRs[15] {
			t.Fatalf("verified a different machine or manifest: %+v", r)
		}
	})
}
