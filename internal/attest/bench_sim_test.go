//go:build tpmsim

package attest_test

import (
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/attest/attesttest"
	"github.com/vesselos/vessel/internal/tpm"
)

var benchFlag = flag.Bool("attest.bench", false, "time quotes and a 100-machine verification batch against go-attestation and tpm2_checkquote (bench/attest.sh)")

// TestAttestBench boots 100 machines on the reference TPM simulator (each
// a fresh, manufactured TPM with the OVMF log replayed, provisioned, with
// a measured manifest and a certified AK), times one quote per machine,
// then verifies the 100 quotes with vessel's Verify and, in the same run,
// with go-attestation (AKPublic.Verify + ParseEventLog + EventLog.Verify)
// and tpm2_checkquote (one process per quote), and prints the ratios.
//
// The machines are not locked: go-attestation replays PCR7 from the
// firmware log alone and knows nothing of vessel's lock event.
func TestAttestBench(t *testing.T) {
	if !*benchFlag {
		t.Skip("run with -attest.bench (bench/attest.sh)")
	}
	const machines = 100
	sim, tp := simulatorTPM(t)
	k := attesttest.NewKeys(t, "Acme")
	var quotes []*attest.Quote
	var nonces [][]byte
	var quoteTime time.Duration
	var commands int
	var uki *x509.Certificate
	for i := range machines {
		if i > 0 {
			if err := sim.ManufactureReset(); err != nil {
				t.Fatal(err)
			}
		}
		m := attesttest.Boot(t, tp, k, false)
		n := attesttest.Nonce(t)
		before := tp.Commands()
		start := time.Now()
		q, err := attest.Make(attest.MakeOptions{TPM: tp, State: m.State, IdentityCert: m.IDCert, Nonce: n,
			FirmwareLog: m.FirmwareLog, VesselLog: m.VesselLog, Manifest: m.Signed})
		quoteTime += time.Since(start)
		commands += tp.Commands() - before
		if err != nil {
			t.Fatal(err)
		}
		quotes, nonces = append(quotes, q), append(nonces, n)
		uki = m.UKICert
	}
	pol := k.Policy()
	pol.UKISigners = []*x509.Certificate{uki}

	start := time.Now()
	for i, q := range quotes {
		if _, err := attest.Verify(q, nonces[i], pol); err != nil {
			t.Fatalf("machine %d: %v", i, err)
		}
	}
	vessel := time.Since(start)

	// go-attestation: the AK's quote signature, nonce and PCR digest, then
	// the firmware log parsed and replayed against the quoted PCRs.
	start = time.Now()
	for i, q := range quotes {
		ak, err := goattest.ParseAKPublic(q.AKPublic)
		if err != nil {
			t.Fatal(err)
		}
		var pcrs []goattest.PCR
		for _, n := range attest.PCRs {
			pcrs = append(pcrs, goattest.PCR{Index: n, Digest: q.PCRs[n], DigestAlg: crypto.SHA256})
		}
		if err := ak.Verify(goattest.Quote{Quote: q.Quote, Signature: tpmtSignature(t, q.QuoteSignature)}, pcrs, nonces[i]); err != nil {
			t.Fatalf("go-attestation, machine %d: %v", i, err)
		}
		el, err := goattest.ParseEventLog(q.FirmwareLog)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := el.Verify(pcrs); err != nil {
			t.Fatalf("go-attestation event log, machine %d: %v", i, err)
		}
	}
	goAttest := time.Since(start)

	// tpm2_checkquote: signature and nonce of each quote (no PCR file),
	// one process per quote (inputs written beforehand, not timed).
	var checkquote time.Duration
	if _, err := exec.LookPath("tpm2_checkquote"); err == nil {
		dir := t.TempDir()
		var cmds []*exec.Cmd
		for i, q := range quotes {
			cmds = append(cmds, checkquoteCmd(t, dir, i, q, nonces[i]))
		}
		start = time.Now()
		for i, c := range cmds {
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("tpm2_checkquote, machine %d: %v\n%s", i, err, out)
			}
		}
		checkquote = time.Since(start)
	}

	// The same quote on swtpm (a TPM over a socket, as a machine's TPM
	// is a device): 20 quotes on one provisioned machine.
	var swQuote time.Duration
	const swQuotes = 20
	if _, err := exec.LookPath("swtpm"); err == nil {
		sw := startSwtpm(t)
		defer sw.Close()
		m := attesttest.Boot(t, sw, k, false)
		for range swQuotes {
			n := attesttest.Nonce(t)
			start := time.Now()
			q, err := attest.Make(attest.MakeOptions{TPM: sw, State: m.State, IdentityCert: m.IDCert, Nonce: n,
				FirmwareLog: m.FirmwareLog, VesselLog: m.VesselLog, Manifest: m.Signed})
			swQuote += time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := attest.Verify(q, n, pol); err != nil {
				t.Fatal(err)
			}
		}
	}

	per := func(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000/machines) }
	fmt.Printf("attest: quote (reference TPM simulator, AK loaded, TPM2_Quote, 9 PCR reads, flush): %s per quote, %.0f TPM commands\n",
		per(quoteTime), float64(commands)/machines)
	if swQuote > 0 {
		fmt.Printf("attest: quote (swtpm over a unix socket): %.3f ms per quote\n", float64(swQuote.Microseconds())/1000/swQuotes)
	}
	fmt.Printf("attest: verify %d machines: vessel %v total, %s per machine (identity chain, AK certification, quote, nonce, firmware+vessel log replay, Secure Boot signer, manifest signature chain, product, allow list)\n",
		machines, vessel.Round(time.Millisecond), per(vessel))
	fmt.Printf("attest: verify %d machines: go-attestation v0.6.4 %v total, %s per machine (quote, nonce, PCR digest, firmware log parse+replay); vessel/go-attestation = %.2f\n",
		machines, goAttest.Round(time.Millisecond), per(goAttest), float64(vessel)/float64(goAttest))
	if checkquote > 0 {
		fmt.Printf("attest: verify %d machines: tpm2_checkquote %v total, %s per machine (quote signature and nonce; one process each); vessel/tpm2_checkquote = %.3f\n",
			machines, checkquote.Round(time.Millisecond), per(checkquote), float64(vessel)/float64(checkquote))
	}
	if per := vessel / machines; per > 10*time.Millisecond {
		t.Logf("vessel verification %v per machine is above the 10 ms target", per)
	}
}

// tpmtSignature turns an ASN.1 ECDSA signature into a marshalled
// TPMT_SIGNATURE (ECDSA, SHA-256), as go-attestation and tpm2-tools read it.
func tpmtSignature(t testing.TB, der []byte) []byte {
	t.Helper()
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		t.Fatal(err)
	}
	return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA,
		&tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: rs.R.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: rs.S.FillBytes(make([]byte, 32))}})})
}

// checkquoteCmd writes q's AK (PEM), message and signature and returns
// the tpm2_checkquote command for them.
func checkquoteCmd(t *testing.T, dir string, i int, q *attest.Quote, nonce []byte) *exec.Cmd {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](q.AKPublic)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	f := func(name string, b []byte) string {
		p := filepath.Join(dir, fmt.Sprintf("%d.%s", i, name))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ak := f("ak.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	msg := f("msg", q.Quote)
	sig := f("sig", tpmtSignature(t, q.QuoteSignature))
	return exec.Command("tpm2_checkquote", "-u", ak, "-m", msg, "-s", sig, "-g", "sha256", "-q", hex.EncodeToString(nonce))
}

// startSwtpm starts swtpm on a unix socket in a temp dir and opens it; the
// process is killed by PID when the test ends.
func startSwtpm(t *testing.T) *tpm.TPM {
	t.Helper()
	dir, err := os.MkdirTemp("", "attest-swtpm-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+sock+".ctrl", "--tpmstate", "dir="+dir, "--flags", "not-need-init,startup-clear")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	tp, err := tpm.Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	return tp
}
