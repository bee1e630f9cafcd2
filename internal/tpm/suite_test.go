package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

var soak = flag.Bool("tpm.soak", false, "run 1000 seal/unseal cycles instead of 100")

// opener opens a connection to the TPM under test; suites open and close
// connections between steps so that tpm2-tools can use swtpm in between.
type opener func(t *testing.T) *TPM

func use(t *testing.T, open opener, f func(tp *TPM)) {
	t.Helper()
	tp := open(t)
	defer func() {
		if err := tp.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	f(tp)
	if tp.live != 0 {
		t.Errorf("%d transient objects left loaded", tp.live)
	}
	if tp.MaxLoaded() > 3 {
		t.Errorf("%d transient objects loaded at once, want <= 3", tp.MaxLoaded())
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t *testing.T, k *ecdsa.PrivateKey, pcr7 []byte, v uint64) *SignedPolicy {
	t.Helper()
	p, err := SignPolicy(k, pcr7, v)
	if err != nil {
		t.Fatal(err)
	}
	// round-trip through the file format
	q, err := ParsePolicy(p.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// fixture is a provisioned TPM: the suite's steps build on it.
type fixture struct {
	open     opener
	st       State
	key      *ecdsa.PrivateKey
	recovery string
	secret   []byte
}

// provision provisions a fresh (unowned) TPM.
func provision(t *testing.T, open opener) *fixture {
	f := &fixture{open: open, st: State{Dir: t.TempDir()}, key: newKey(t), secret: []byte("0123456789abcdef0123456789abcdef")}
	use(t, open, func(tp *TPM) {
		res, err := tp.Provision(f.st, &f.key.PublicKey, ProvisionOptions{Version: 2})
		if err != nil {
			t.Fatalf("provision: %v", err)
		}
		if _, err := ParseRecovery(res.Recovery); err != nil {
			t.Fatalf("recovery %q: %v", res.Recovery, err)
		}
		f.recovery = res.Recovery
		if err := tp.Seal(f.st, "disk", f.secret, false); err != nil {
			t.Fatalf("seal: %v", err)
		}
	})
	return f
}

func (f *fixture) current(t *testing.T, v uint64) *SignedPolicy {
	var p *SignedPolicy
	use(t, f.open, func(tp *TPM) {
		pcr, err := tp.PCR7()
		if err != nil {
			t.Fatal(err)
		}
		p = sign(t, f.key, pcr, v)
	})
	return p
}

func (f *fixture) unseal(t *testing.T, p *SignedPolicy, recovery []byte) ([]byte, error) {
	var out []byte
	var err error
	use(t, f.open, func(tp *TPM) { out, err = tp.Unseal(f.st, "disk", p, recovery) })
	return out, err
}

func (f *fixture) mustUnseal(t *testing.T, p *SignedPolicy) {
	t.Helper()
	out, err := f.unseal(t, p, nil)
	if err != nil {
		t.Fatalf("unseal: %v", err)
	}
	if !bytes.Equal(out, f.secret) {
		t.Fatalf("unseal = %q, want %q", out, f.secret)
	}
}

// runSuite is the behaviour every TPM implementation must show. open must
// return connections to one fresh, unowned TPM.
func runSuite(t *testing.T, open opener) {
	f := provision(t, open)

	t.Run("info", func(t *testing.T) {
		use(t, open, func(tp *TPM) {
			in, err := tp.Info()
			if err != nil {
				t.Fatal(err)
			}
			if in.SRK != "standard" || !in.OwnerAuthSet || in.PolicyVersion == nil || *in.PolicyVersion != 1 || in.Transient != 0 {
				t.Errorf("info = %+v", in)
			}
		})
	})

	t.Run("provision twice is refused", func(t *testing.T) {
		use(t, open, func(tp *TPM) {
			_, err := tp.Provision(State{Dir: t.TempDir()}, &f.key.PublicKey, ProvisionOptions{Force: true})
			if !errors.Is(err, ErrOwned) {
				t.Fatalf("err = %v, want ErrOwned", err)
			}
		})
	})

	p1 := f.current(t, 1)
	t.Run("seal unseal", func(t *testing.T) { f.mustUnseal(t, p1) })

	t.Run("wrong policy key", func(t *testing.T) {
		bad := sign(t, newKey(t), p1.PCR7, 1)
		_, err := f.unseal(t, bad, nil)
		if !errors.Is(err, ErrWrongPolicyKey) {
			t.Fatalf("err = %v, want ErrWrongPolicyKey", err)
		}
		// The TPM itself refuses too, when vessel's own check is skipped.
		use(t, open, func(tp *TPM) {
			r, err := f.st.Record()
			if err != nil {
				t.Fatal(err)
			}
			b, err := f.st.readBlob(f.st.path("sealed", "disk.sealed"))
			if err != nil {
				t.Fatal(err)
			}
			r.PolicyKeyName = bad.KeyName
			_, err = tp.unsealBlob(r, b, bad, nil)
			if !errors.Is(err, ErrWrongPolicyKey) || !errors.Is(err, tpm2.TPMRCPolicyFail) {
				t.Fatalf("err = %v, want ErrWrongPolicyKey from TPM_RC_POLICY_FAIL", err)
			}
		})
		// A tampered file fails the signature check.
		tampered := *p1
		tampered.Signature = append([]byte(nil), p1.Signature...)
		tampered.Signature[len(tampered.Signature)-1] ^= 1
		if _, err := ParsePolicy(tampered.Marshal()); !errors.Is(err, ErrWrongPolicyKey) {
			t.Fatalf("tampered: err = %v", err)
		}
	})

	t.Run("identity", func(t *testing.T) {
		use(t, open, func(tp *TPM) {
			id, err := tp.Identity(f.st, p1, nil)
			if err != nil {
				t.Fatal(err)
			}
			der, err := id.CSR("machine-1")
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatalf("CSR signature: %v", err)
			}
			msg := sha256.Sum256([]byte("hello"))
			sig, err := id.Sign(nil, msg[:], cryptoSHA256)
			if err != nil {
				t.Fatal(err)
			}
			if !ecdsa.VerifyASN1(csr.PublicKey.(*ecdsa.PublicKey), msg[:], sig) {
				t.Fatal("signature does not verify with the CSR's key")
			}
		})
	})

	t.Run("lock then rotate policy", func(t *testing.T) {
		use(t, open, func(tp *TPM) {
			if err := tp.Lock(); err != nil {
				t.Fatal(err)
			}
		})
		// The identity key still signs after the lock (its identity
		// approval, policyRef vessel-identity, is for the locked PCR7)...
		use(t, open, func(tp *TPM) {
			id, err := tp.Identity(f.st, p1, nil)
			if err != nil {
				t.Fatal(err)
			}
			msg := sha256.Sum256([]byte("after the lock"))
			sig, err := id.Sign(nil, msg[:], cryptoSHA256)
			if err != nil {
				t.Fatalf("identity sign after lock: %v", err)
			}
			if !ecdsa.VerifyASN1(id.Public().(*ecdsa.PublicKey), msg[:], sig) {
				t.Fatal("identity signature after lock does not verify")
			}
			// ...but that approval unseals nothing: the TPM refuses it
			// for a sealed object (PolicyAuthorize with an empty
			// policyRef is what sealed objects accept).
			r, err := f.st.Record()
			if err != nil {
				t.Fatal(err)
			}
			b, err := f.st.readBlob(f.st.path("sealed", "disk.sealed"))
			if err != nil {
				t.Fatal(err)
			}
			_, branches, err := SealPolicy(r.PolicyKeyName)
			if err != nil {
				t.Fatal(err)
			}
			err = tp.policySession(r, p1.identityApproval(), nil, branches[:], true, func(sess tpm2.Session) (err error) {
				h, err := tp.load(r, b)
				if err != nil {
					return err
				}
				defer tp.flush(h.Handle, &err)
				_, err = (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: sess}}).Execute(tp)
				return err
			})
			if err == nil {
				t.Fatal("the identity approval unsealed a sealed object")
			}
		})
		// PolicyFor finds p1 in STATE/policies for the locked PCR7 (its
		// identity approval), and nothing for another value.
		os.MkdirAll(f.st.path(PoliciesDir), 0o700)
		os.WriteFile(f.st.path(PoliciesDir, "p1.signed"), p1.Marshal(), 0o600)
		defer os.RemoveAll(f.st.path(PoliciesDir))
		if got, err := f.st.PolicyFor(LockedPCR7(p1.PCR7)); err != nil || got.Comment != "p1.signed" {
			t.Fatalf("PolicyFor(locked PCR7) = %v, %v", got, err)
		}
		if got, err := f.st.PolicyFor(p1.PCR7); err != nil || got.Comment != "p1.signed" {
			t.Fatalf("PolicyFor(PCR7) = %v, %v", got, err)
		}
		if _, err := f.st.PolicyFor(make([]byte, 31)); !errors.Is(err, ErrPolicyMismatch) {
			t.Fatalf("PolicyFor(other) err = %v, want ErrPolicyMismatch", err)
		}
		_, err := f.unseal(t, p1, nil)
		// After a lock the error says so, and does not suggest signing a
		// policy for the locked PCR7 (issue 22).
		if !errors.Is(err, ErrPolicyMismatch) || !errors.Is(err, ErrLocked) || strings.Contains(err.Error(), "--from-current") {
			t.Fatalf("err = %v, want ErrPolicyMismatch and ErrLocked without the --from-current hint", err)
		}
		p2 := f.current(t, 1)
		f.mustUnseal(t, p2) // no re-seal
	})

	t.Run("recovery", func(t *testing.T) {
		sec, err := ParseRecovery(strings.ToLower(f.recovery))
		if err != nil {
			t.Fatal(err)
		}
		out, err := f.unseal(t, nil, sec)
		if err != nil || !bytes.Equal(out, f.secret) {
			t.Fatalf("unseal with recovery = %q, %v", out, err)
		}
		wrong := bytes.Clone(sec)
		wrong[0] ^= 1
		if _, err := f.unseal(t, nil, wrong); !errors.Is(err, ErrBadRecovery) {
			t.Fatalf("wrong recovery: err = %v, want ErrBadRecovery", err)
		}
	})

	t.Run("version bump revokes older policies", func(t *testing.T) {
		old := f.current(t, 1)
		next := f.current(t, 2)
		f.mustUnseal(t, next) // version 1 <= 2: already valid
		use(t, open, func(tp *TPM) {
			if err := tp.Bump(f.st, next, 2, nil); err != nil {
				t.Fatal(err)
			}
			if err := tp.Bump(f.st, next, 1, nil); err == nil {
				t.Fatal("lowering the version was accepted")
			}
		})
		_, err := f.unseal(t, old, nil)
		if !errors.Is(err, ErrRevokedPolicy) {
			t.Fatalf("err = %v, want ErrRevokedPolicy", err)
		}
		f.mustUnseal(t, next)
	})

	t.Run("manifest version counter", func(t *testing.T) {
		use(t, open, func(tp *TPM) {
			if v, err := tp.AcceptedVersion(); err != nil || v != 2 {
				t.Fatalf("accepted version after provisioning = %d, %v; want 2", v, err)
			}
			if v, err := tp.AdvanceVersion(5); err != nil || v != 5 {
				t.Fatalf("advance to 5 = %d, %v", v, err)
			}
			if v, err := tp.AdvanceVersion(3); err != nil || v != 5 {
				t.Fatalf("advance to 3 = %d, %v; want 5 (no change)", v, err)
			}
			if _, err := tp.CheckVersion(4); !errors.Is(err, ErrRollback) {
				t.Fatalf("check 4 after 5: err = %v, want ErrRollback", err)
			}
			if acc, err := tp.CheckVersion(5); err != nil || acc != 5 {
				t.Fatalf("check 5 = %d, %v", acc, err)
			}
			if _, err := tp.AdvanceVersion(5 + MaxVersionStep + 1); err == nil {
				t.Fatal("a step above MaxVersionStep was accepted")
			}
			// The base is write-locked: rewriting it (to lower the
			// accepted version) is refused by the TPM.
			name := nvName(baseNVPublic(true))
			_, err := (tpm2.NVWrite{AuthHandle: tpm2.AuthHandle{Handle: ManifestBaseIndex, Name: name, Auth: tpm2.PasswordAuth(nil)},
				NVIndex: tpm2.NamedHandle{Handle: ManifestBaseIndex, Name: name}, Data: tpm2.TPM2BMaxNVBuffer{Buffer: make([]byte, 16)}}).Execute(tp)
			if !errors.Is(err, tpm2.TPMRCNVLocked) {
				t.Fatalf("rewrite of the base: err = %v, want TPM_RC_NV_LOCKED", err)
			}
		})
	})

	t.Run("cycles leave no handle", func(t *testing.T) {
		n := 100
		if testing.Short() {
			n = 10
		}
		if *soak {
			n = 1000
		}
		p := f.current(t, 2)
		use(t, open, func(tp *TPM) {
			for i := range n {
				if err := tp.Seal(f.st, "cycle", []byte{byte(i), 1, 2, 3}, true); err != nil {
					t.Fatal(err)
				}
				out, err := tp.Unseal(f.st, "cycle", p, nil)
				if err != nil || out[0] != byte(i) {
					t.Fatalf("cycle %d: %q %v", i, out, err)
				}
			}
			if n, err := tp.TransientHandles(); err != nil || n != 0 {
				t.Fatalf("transient handles after cycles: %d, %v", n, err)
			}
		})
	})
}

var cryptoSHA256 = crypto.SHA256
