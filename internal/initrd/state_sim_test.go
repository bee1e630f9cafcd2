//go:build tpmsim

package initrd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	luks "github.com/anatol/luks.go"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/vesselos/vessel/internal/luks2"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/tpm"
)

// stateFake is fakeSystem with what the TPM step needs: remount is
// recorded, openLUKS checks the passphrase with luks.go (no dm).
type stateFake struct {
	fakeSystem
	remounts []uintptr
	opened   int
}

func (f *stateFake) mount(m Mount) error {
	if m.Flags&msRemount != 0 {
		f.remounts = append(f.remounts, m.Flags)
		return nil
	}
	return f.fakeSystem.mount(m)
}

func (f *stateFake) openLUKS(dev string, pass []byte, name string) (string, error) {
	d, err := luks.Open(dev)
	if err != nil {
		return "", err
	}
	defer d.Close()
	if _, err := d.UnsealVolume(0, pass); err != nil {
		return "", err
	}
	f.opened++
	return "/dev/dm-0", nil
}

// stateRoot is a fixture root: the initrd's policy key, a data partition
// directory with policies, and a vessel-state partition (a file) that
// sysfs lists.
func stateRoot(t *testing.T, key *ecdsa.PrivateKey) string {
	root := t.TempDir()
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	files := map[string][]byte{
		PolicyKeyFile:                           pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		BlockClass + "/vda3/uevent":             []byte("MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nPARTNAME=vessel-state\n"),
		"/dev/vda3":                             make([]byte, luks2.DataOffset+2<<20),
		TPMStateDir + "/policies/.placeholder":  nil,
		measure.LogFile + ".placeholder-parent": nil,
	}
	for p, b := range files {
		os.MkdirAll(filepath.Dir(root+p), 0o755)
		if err := os.WriteFile(root+p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func writePolicy(t *testing.T, root, name string, key *ecdsa.PrivateKey, pcr7 []byte, v uint64) {
	p, err := tpm.SignPolicy(key, pcr7, v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root+PoliciesDir+"/"+name, p.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTPMBootSimulator runs the initrd's TPM step against the in-process
// TPM, rebooting it (TPM2_Startup after a reset) between steps.
func TestTPMBootSimulator(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	open := func() *tpm.TPM { return tpm.New(transport.FromReadWriter(sim), nil, "simulator") }
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := stateRoot(t, key)
	zero := make([]byte, 32)
	writePolicy(t, root, "prod.signed", key, zero, 1)
	trial := false // the boot is a trial of a staged slot
	boot := func(version int64, test bool) (*TPMReport, string, *stateFake, error) {
		t.Helper()
		if err := sim.Reset(); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		sys := &stateFake{}
		s := &Stage{Console: &out, Root: root, sys: sys, trial: trial}
		tp := open()
		rep, err := s.tpmBoot(version, tp, nil, test)
		return rep, out.String(), sys, err
	}

	t.Run("first boot provisions, encrypts, unseals, locks", func(t *testing.T) {
		rep, out, sys, err := boot(2, true)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !rep.Provisioned || !rep.Unsealed || !rep.Locked || rep.Volume != StateMount || sys.opened != 1 || rep.Accepted != 2 {
			t.Fatalf("report %+v opened %d\n%s", rep, sys.opened, out)
		}
		if ok, _ := luks2.IsLUKS(root + "/dev/vda3"); !ok {
			t.Fatal("the state partition is not LUKS after the first boot")
		}
		if len(sys.remounts) < 2 || sys.remounts[0]&msRdOnly != 0 || sys.remounts[1]&msRdOnly == 0 {
			t.Fatalf("remounts %v: want read-write then read-only", sys.remounts)
		}
		if !strings.Contains(strings.Join(sys.mounts, ","), " "+root+VolumesDir) || !strings.Contains(out, "service volumes: /data/volumes is the state volume's volumes/") {
			t.Fatalf("service volumes not bound: mounts %q\n%s", sys.mounts, out)
		}
		for _, want := range []string{"TPM recovery secret (shown once, write it down): ", "unseal after lock refused=true locked=true", "identity sign after lock ok=true", "TPM locked: PCR7 extended"} {
			if !strings.Contains(out, want) {
				t.Errorf("console lacks %q:\n%s", want, out)
			}
		}
		evs, err := measure.Read(root + measure.LogFile)
		if err != nil || len(evs) != 1 || evs[0].Type != measure.TypeLock || evs[0].PCR != 7 || evs[0].Data != tpm.LockEvent {
			t.Fatalf("measurement log %+v, %v", evs, err)
		}
		// The log replays to the TPM's PCR7: zero extended by the lock.
		if got, _ := measure.Replay(evs, 7); !bytes.Equal(got, tpm.LockedPCR7(zero)) {
			t.Fatalf("replayed PCR7 %x, want %x", got, tpm.LockedPCR7(zero))
		}
		// The running system (same boot, after the lock) finds the policy
		// for its locked PCR7, cannot unseal, can sign.
		var host []string
		CheckHostTPM(func(f string, a ...any) { host = append(host, fmt.Sprintf(f, a...)) }, open(), root+TPMStateDir)
		if len(host) != 2 || !strings.Contains(host[0], "refused=true locked=true (policy prod.signed)") || !strings.Contains(host[1], "ok=true") {
			t.Fatalf("host check: %q", host)
		}
	})

	t.Run("reboot unseals without provisioning", func(t *testing.T) {
		rep, out, sys, err := boot(2, false)
		if err != nil || rep.Provisioned || !rep.Unsealed || sys.opened != 1 || rep.Commands == 0 {
			t.Fatalf("%+v %v\n%s", rep, err, out)
		}
		t.Logf("TPM step on a normal boot: %d commands, %d ms (simulator)", rep.Commands, rep.Millis)
	})

	t.Run("PCR mismatch names both values", func(t *testing.T) {
		os.Remove(root + PoliciesDir + "/prod.signed")
		other := bytes.Repeat([]byte{0xab}, 32)
		writePolicy(t, root, "other.signed", key, other, 1)
		defer os.Remove(root + PoliciesDir + "/other.signed")
		defer writePolicy(t, root, "prod.signed", key, zero, 1)
		rep, out, sys, err := boot(2, false)
		if err != nil || rep.Unsealed || sys.opened != 0 || !rep.Locked {
			t.Fatalf("%+v %v\n%s", rep, err, out)
		}
		if !strings.Contains(strings.Join(sys.mounts, ","), "tmpfs "+root+VolumesDir) {
			t.Fatalf("service volumes not on a tmpfs when the volume is locked: %q", sys.mounts)
		}
		want := "PCR7 does not match the signed policy: actual PCR7 " + strings.Repeat("00", 32) + ", expected " + strings.Repeat("ab", 32) + " (other.signed, version 1)"
		if !strings.Contains(out, want) || !strings.Contains(out, "state volume NOT mounted") {
			t.Fatalf("console lacks %q:\n%s", want, out)
		}
	})

	t.Run("policy signed by another key", func(t *testing.T) {
		os.Remove(root + PoliciesDir + "/prod.signed")
		defer writePolicy(t, root, "prod.signed", key, zero, 1)
		k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		writePolicy(t, root, "mallory.signed", k2, zero, 1)
		defer os.Remove(root + PoliciesDir + "/mallory.signed")
		rep, out, _, err := boot(2, false)
		if err != nil || rep.Unsealed || !strings.Contains(out, "policy not signed by the provisioned policy key: mallory.signed signed by another key") {
			t.Fatalf("%+v %v\n%s", rep, err, out)
		}
	})

	t.Run("revoked policy version", func(t *testing.T) {
		// Bump the policy version to 2 with a policy for version 2, then
		// only the version-1 policy is shipped.
		tp := open()
		if err := sim.Reset(); err != nil {
			t.Fatal(err)
		}
		p2, _ := tpm.SignPolicy(key, zero, 2)
		if err := tp.Bump(tpm.State{Dir: root + TPMStateDir}, p2, 2, nil); err != nil {
			t.Fatal(err)
		}
		rep, out, _, err := boot(2, false)
		if err != nil || rep.Unsealed || !strings.Contains(out, "signed policy was revoked") || !strings.Contains(out, "TPM policy version 2, policy signed for version 1") {
			t.Fatalf("%+v %v\n%s", rep, err, out)
		}
		writePolicy(t, root, "prod.signed", key, zero, 2)
	})

	t.Run("lower manifest version refused by the NV counter", func(t *testing.T) {
		if err := sim.Reset(); err != nil {
			t.Fatal(err)
		}
		if v, err := open().AdvanceVersion(3); err != nil || v != 3 {
			t.Fatalf("advance: %d %v", v, err)
		}
		rep, out, sys, err := boot(2, false)
		if !errors.Is(err, tpm.ErrRollback) || sys.opened != 0 {
			t.Fatalf("err = %v (%+v), want ErrRollback\n%s", err, rep, out)
		}
		if rep, out, _, err := boot(3, false); err != nil || !rep.Unsealed {
			t.Fatalf("version 3: %+v %v\n%s", rep, err, out)
		}
	})

	t.Run("TPM state deleted: no new volume over the old one", func(t *testing.T) {
		if err := os.Rename(root+TPMStateDir+"/state.json", root+"/state.json.saved"); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(root+"/state.json.saved", root+TPMStateDir+"/state.json")
		rep, out, sys, err := boot(3, false)
		if err != nil || rep.Provisioned || rep.Unsealed || sys.opened != 0 || !strings.Contains(out, "already encrypted but") {
			t.Fatalf("%+v %v\n%s", rep, err, out)
		}
	})

	t.Run("no TPM", func(t *testing.T) {
		var out bytes.Buffer
		s := &Stage{Console: &out, Root: root, sys: &stateFake{}}
		rep, err := s.tpmBoot(3, nil, errors.New("no TPM: /dev/tpmrm0 did not appear in 2s"), false)
		if err != nil || rep.Unsealed || !strings.Contains(out.String(), "TPM FAILED: no TPM (no TPM: /dev/tpmrm0 did not appear in 2s): the state volume stays locked") {
			t.Fatalf("%+v %v\n%s", rep, err, out.String())
		}
	})

	t.Run("no policy key: the step does nothing", func(t *testing.T) {
		var out bytes.Buffer
		s := &Stage{Console: &out, Root: t.TempDir(), sys: &stateFake{}}
		rep, err := s.tpmBoot(3, open(), nil, false)
		if rep != nil || err != nil || out.Len() != 0 {
			t.Fatalf("%+v %v %q", rep, err, out.String())
		}
	})

	t.Run("the default slot advances the counter, a trial does not", func(t *testing.T) {
		trial = true
		rep, out, _, err := boot(4, false)
		trial = false
		if err != nil || rep.Accepted != 3 || strings.Contains(out, "advanced") {
			t.Fatalf("trial of version 4: %+v %v\n%s", rep, err, out)
		}
		rep, out, _, err = boot(4, false)
		if err != nil || rep.Accepted != 4 || !strings.Contains(out, "TPM: accepted version advanced to 4 (NV counter)") {
			t.Fatalf("default version 4: %+v %v\n%s", rep, err, out)
		}
		if v, err := open().AcceptedVersion(); err != nil || v != 4 {
			t.Fatalf("the TPM accepts %d (%v), want 4", v, err)
		}
		if _, _, _, err := boot(3, false); !errors.Is(err, tpm.ErrRollback) {
			t.Fatalf("version 3 after the counter moved to 4: %v, want ErrRollback", err)
		}
	})
}
