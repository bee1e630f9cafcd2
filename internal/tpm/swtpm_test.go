package tpm

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// swtpm is an swtpm process serving one fresh TPM on 127.0.0.1:port (data)
// and port+1 (control), started by the test and killed on cleanup.
type swtpm struct {
	port int
	dir  string
}

func startSwtpm(t testing.TB) *swtpm {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm is not on PATH: install swtpm and tpm2-tools (make deps) to run the swtpm tests")
	}
	dir := t.TempDir()
	for try := 0; try < 20; try++ {
		port := freePortPair(t)
		cmd := exec.Command("swtpm", "socket", "--tpm2",
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--tpmstate", "dir="+dir, "--flags", "not-need-init,startup-clear")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-done
		})
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case err := <-done:
				done <- err
				goto retry // lost the port race: try other ports
			default:
			}
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				c.Close()
				return &swtpm{port: port, dir: dir}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("swtpm did not start: %s", stderr.String())
	retry:
	}
	t.Fatal("swtpm: no free port pair")
	return nil
}

// freePortPair returns a port p such that p and p+1 were free.
func freePortPair(t testing.TB) int {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
}

func (s *swtpm) addr() string { return fmt.Sprintf("swtpm:127.0.0.1:%d", s.port) }

func (s *swtpm) open(t *testing.T) *TPM {
	t.Helper()
	tp, err := Open(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

// tools runs a tpm2-tools command against this swtpm in dir.
func (s *swtpm) tools(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := s.toolsErr(dir, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *swtpm) toolsErr(dir string, args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), fmt.Sprintf("TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=%d", s.port))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func needTools(t testing.TB) {
	if _, err := exec.LookPath("tpm2_readpublic"); err != nil {
		t.Skip("tpm2-tools are not on PATH: install tpm2-tools (make deps)")
	}
}

// TestSwtpm runs the suite against swtpm.
func TestSwtpm(t *testing.T) {
	sw := startSwtpm(t)
	runSuite(t, sw.open)
	// The independent check: after every seal/unseal cycle of the suite,
	// tpm2-tools sees no transient object or session left.
	if _, err := exec.LookPath("tpm2_getcap"); err == nil {
		for _, what := range []string{"handles-transient", "handles-loaded-session", "handles-saved-session"} {
			if out := sw.tools(t, t.TempDir(), "tpm2_getcap", what); strings.TrimSpace(out) != "" {
				t.Errorf("tpm2_getcap %s after the suite: %s", what, out)
			}
		}
	}
}

// TestSwtpmTools checks what vessel wrote into the TPM with tpm2-tools.
func TestSwtpmTools(t *testing.T) {
	sw := startSwtpm(t)
	needTools(t)
	f := provision(t, sw.open)
	rec, err := f.st.Record()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	t.Run("readpublic SRK", func(t *testing.T) {
		out := sw.tools(t, dir, "tpm2_readpublic", "-c", "0x81000001")
		if !strings.Contains(out, "name: "+hex.EncodeToString(rec.SRKName)) {
			t.Fatalf("tpm2_readpublic does not show vessel's SRK name %x:\n%s", rec.SRKName, out)
		}
		for _, want := range []string{"value: ecc", "nist p256", "restricted", "decrypt", "fixedtpm"} {
			if !strings.Contains(strings.ToLower(out), strings.ToLower(want)) {
				t.Errorf("SRK public area lacks %q:\n%s", want, out)
			}
		}
	})

	p := f.current(t, 1)
	td := toolsDir(t, f, p)

	t.Run("approved policy digest", func(t *testing.T) {
		sw.tools(t, td, "tpm2_startauthsession", "-S", "trial.ctx")
		sw.tools(t, td, "tpm2_policypcr", "-S", "trial.ctx", "-l", "sha256:7", "-f", "pcr7.bin")
		sw.tools(t, td, "tpm2_policynv", "-S", "trial.ctx", "-i", "version.bin", "-L", "tools-approved.dig", "0x01560001", "ule")
		sw.tools(t, td, "tpm2_flushcontext", "trial.ctx")
		got := readFile(t, td, "tools-approved.dig")
		if !bytes.Equal(got, p.ApprovedPolicy) {
			t.Fatalf("tpm2-tools approved policy %x, vessel %x", got, []byte(p.ApprovedPolicy))
		}
	})

	t.Run("sealed object policy digest", func(t *testing.T) {
		sec, err := ParseRecovery(f.recovery)
		if err != nil {
			t.Fatal(err)
		}
		sw.tools(t, td, "tpm2_loadexternal", "-C", "o", "-G", "ecc", "-a", "sign|userwithauth", "-u", "policy.pub.pem", "-c", "pk.ctx", "-n", "pk.name")
		if got := readFile(t, td, "pk.name"); !bytes.Equal(got, rec.PolicyKeyName) {
			t.Fatalf("tpm2-tools names the policy key %x, vessel %x", got, []byte(rec.PolicyKeyName))
		}
		sw.tools(t, td, "tpm2_flushcontext", "-t")
		sw.tools(t, td, "tpm2_startauthsession", "-S", "trial.ctx")
		sw.tools(t, td, "tpm2_policyauthorize", "-S", "trial.ctx", "-n", "pk.name", "-L", "a.dig")
		sw.tools(t, td, "tpm2_flushcontext", "trial.ctx")
		sw.tools(t, td, "tpm2_startauthsession", "-S", "trial.ctx")
		sw.tools(t, td, "tpm2_policysecret", "-S", "trial.ctx", "-c", "0x01560002", "-L", "b.dig", "hex:"+hex.EncodeToString(sec))
		sw.tools(t, td, "tpm2_flushcontext", "trial.ctx")
		sw.tools(t, td, "tpm2_startauthsession", "-S", "trial.ctx")
		sw.tools(t, td, "tpm2_policyor", "-S", "trial.ctx", "-l", "sha256:a.dig,b.dig", "-L", "or.dig")
		sw.tools(t, td, "tpm2_flushcontext", "trial.ctx")
		if got := readFile(t, td, "or.dig"); !bytes.Equal(got, rec.SealPolicy) {
			t.Fatalf("tpm2-tools seal policy %x, vessel %x", got, []byte(rec.SealPolicy))
		}
	})

	t.Run("tpm2-tools unseals with the signed policy", func(t *testing.T) {
		out := toolsUnseal(t, sw, td)
		if !bytes.Equal(out, f.secret) {
			t.Fatalf("tpm2_unseal = %q, want %q", out, f.secret)
		}
		if out := sw.tools(t, td, "tpm2_getcap", "handles-transient"); strings.TrimSpace(out) != "" {
			t.Fatalf("transient handles left: %s", out)
		}
	})
}

// toolsDir writes what tpm2-tools need to unseal f's "disk" with p.
func toolsDir(t testing.TB, f *fixture, p *SignedPolicy) string {
	td := t.TempDir()
	rec, err := f.st.Record()
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.st.readBlob(f.st.path("sealed", "disk.sealed"))
	if err != nil {
		t.Fatal(err)
	}
	_, branches, err := SealPolicy(rec.PolicyKeyName)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	files := map[string][]byte{
		"policy.pub.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"pcr7.bin":       p.PCR7,
		"version.bin":    be64(p.Version),
		"approved.dig":   p.ApprovedPolicy,
		"policy.sig":     p.Signature,
		"a.dig":          branches[0],
		"b.dig":          branches[1],
		"obj.pub":        tpm2b(b.Public),
		"obj.priv":       tpm2b(b.Private),
	}
	for n, d := range files {
		if err := os.WriteFile(filepath.Join(td, n), d, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return td
}

func tpm2b(b []byte) []byte {
	out := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
	return append(out, b...)
}

// toolsUnsealSeq is the tpm2-tools command sequence equivalent to one
// vessel unseal with a signed policy.
var toolsUnsealSeq = [][]string{
	{"tpm2_loadexternal", "-C", "o", "-G", "ecc", "-a", "sign|userwithauth", "-u", "policy.pub.pem", "-c", "pk.ctx", "-n", "pk.name"},
	{"tpm2_verifysignature", "-c", "pk.ctx", "-g", "sha256", "-m", "approved.dig", "-s", "policy.sig", "-f", "ecdsa", "-t", "ticket.bin"},
	{"tpm2_flushcontext", "-t"},
	{"tpm2_load", "-C", "0x81000001", "-u", "obj.pub", "-r", "obj.priv", "-c", "obj.ctx"},
	{"tpm2_startauthsession", "--policy-session", "-S", "sess.ctx"},
	{"tpm2_policypcr", "-S", "sess.ctx", "-l", "sha256:7"},
	{"tpm2_policynv", "-S", "sess.ctx", "-i", "version.bin", "0x01560001", "ule"},
	{"tpm2_policyauthorize", "-S", "sess.ctx", "-i", "approved.dig", "-n", "pk.name", "-t", "ticket.bin"},
	{"tpm2_policyor", "-S", "sess.ctx", "-l", "sha256:a.dig,b.dig"},
	{"tpm2_unseal", "-c", "obj.ctx", "-p", "session:sess.ctx", "-o", "secret.out"},
	{"tpm2_flushcontext", "sess.ctx"},
	{"tpm2_flushcontext", "-t"},
}

func toolsUnseal(t testing.TB, sw *swtpm, td string) []byte {
	for _, args := range toolsUnsealSeq {
		sw.tools(t, td, args...)
	}
	return readFile(t, td, "secret.out")
}

func readFile(t testing.TB, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
