package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var keySigs = flag.Int("tpm.keysigs", 1000, "signatures the transient-handle leak test makes with one TPM key")

// verifySig checks sig over digest with pub, independently of the TPM.
func verifySig(t *testing.T, pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) {
	t.Helper()
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			t.Fatal("ECDSA signature from the TPM does not verify")
		}
	case *rsa.PublicKey:
		var err error
		if p, ok := opts.(*rsa.PSSOptions); ok {
			err = rsa.VerifyPSS(k, p.Hash, digest, sig, p)
		} else {
			err = rsa.VerifyPKCS1v15(k, opts.HashFunc(), digest, sig)
		}
		if err != nil {
			t.Fatalf("RSA signature from the TPM does not verify: %v", err)
		}
	default:
		t.Fatalf("public key %T", pub)
	}
}

func keySign(t *testing.T, open opener, file []byte, auth []byte, opts crypto.SignerOpts) (crypto.PublicKey, []byte, []byte) {
	t.Helper()
	kf, err := ParseKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h := opts.HashFunc().New()
	h.Write([]byte("a manifest"))
	digest := h.Sum(nil)
	var sig []byte
	use(t, open, func(tp *TPM) {
		s, err := tp.Signer(kf, auth)
		if err != nil {
			t.Fatal(err)
		}
		if sig, err = s.Sign(rand.Reader, digest, opts); err != nil {
			t.Fatal(err)
		}
	})
	return kf.Public(), digest, sig
}

// runKeySuite is the behaviour of TPM-held keys on a fresh TPM.
func runKeySuite(t *testing.T, open opener) {
	provision(t, open)
	create := func(t *testing.T, o KeyOptions) []byte {
		var b []byte
		use(t, open, func(tp *TPM) {
			var err error
			if b, err = tp.CreateKey(o); err != nil {
				t.Fatal(err)
			}
		})
		return b
	}

	t.Run("create ECC, sign SHA-256 and SHA-384", func(t *testing.T) {
		b := create(t, KeyOptions{})
		if !strings.HasPrefix(string(b), "-----BEGIN TSS2 PRIVATE KEY-----") {
			t.Fatalf("key file starts %q", b[:40])
		}
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
			pub, d, sig := keySign(t, open, b, nil, h)
			if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
				t.Fatalf("public key %T, want ECDSA P-256", pub)
			}
			verifySig(t, pub, d, sig, h)
		}
	})

	t.Run("create RSA, sign PKCS#1 v1.5 and PSS", func(t *testing.T) {
		b := create(t, KeyOptions{RSA: true})
		pub, d, sig := keySign(t, open, b, nil, crypto.SHA256)
		if k, ok := pub.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
			t.Fatalf("public key %T, want RSA 2048", pub)
		}
		verifySig(t, pub, d, sig, crypto.SHA256)
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		pub, d, sig = keySign(t, open, b, nil, pss)
		verifySig(t, pub, d, sig, pss)
	})

	t.Run("authorization", func(t *testing.T) {
		b := create(t, KeyOptions{Auth: []byte("correct horse")})
		kf, err := ParseKeyFile(b)
		if err != nil {
			t.Fatal(err)
		}
		if !kf.NeedsAuth() {
			t.Fatal("key file with a password says it needs none")
		}
		pub, d, sig := keySign(t, open, b, []byte("correct horse"), crypto.SHA256)
		verifySig(t, pub, d, sig, crypto.SHA256)
		use(t, open, func(tp *TPM) {
			if _, err := tp.Signer(kf, nil); err == nil || !strings.Contains(err.Error(), "needs its authorization") {
				t.Errorf("signer without password: %v", err)
			}
			s, err := tp.Signer(kf, []byte("wrong"))
			if err != nil {
				t.Fatal(err) // loading needs no key authorization
			}
			_, err = s.Sign(rand.Reader, d, crypto.SHA256)
			if !errors.Is(err, ErrKeyAuth) {
				t.Errorf("sign with a wrong password: %v, want ErrKeyAuth", err)
			}
		})
	})

	t.Run("import ECDSA P-256, P-384 and RSA 2048", func(t *testing.T) {
		ek := newKey(t)
		ek384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		rk, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		// A P-256 key whose private scalar has a leading zero byte (1 in
		// 256): the wrapping must still give the TPM the right key.
		short := newKey(t)
		for len(short.D.Bytes()) == 32 {
			short = newKey(t)
		}
		for _, k := range []crypto.Signer{ek, ek384, rk, short} {
			var b []byte
			use(t, open, func(tp *TPM) {
				if b, err = tp.ImportKey(k, KeyOptions{Auth: []byte("pw")}); err != nil {
					t.Fatal(err)
				}
			})
			pub, d, sig := keySign(t, open, b, []byte("pw"), crypto.SHA256)
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatalf("imported key file holds another public key")
			}
			verifySig(t, k.Public(), d, sig, crypto.SHA256)
		}
	})

	t.Run("bad key files", func(t *testing.T) {
		for _, b := range [][]byte{nil, []byte("junk"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}),
			pem.EncodeToMemory(&pem.Block{Type: "TSS2 PRIVATE KEY", Bytes: []byte{0x30, 0}})} {
			if _, err := ParseKeyFile(b); err == nil || !strings.Contains(err.Error(), "parse TPM key file") {
				t.Errorf("ParseKeyFile(%q) = %v", b, err)
			}
		}
	})

	t.Run("many signatures leave no transient handle", func(t *testing.T) {
		b := create(t, KeyOptions{})
		kf, err := ParseKeyFile(b)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("x"))
		use(t, open, func(tp *TPM) {
			s, err := tp.Signer(kf, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < *keySigs; i++ {
				sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
				if err != nil {
					t.Fatalf("signature %d: %v", i, err)
				}
				if i == 0 || i == *keySigs-1 {
					verifySig(t, kf.Public(), d[:], sig, crypto.SHA256)
				}
			}
			n, err := tp.TransientHandles()
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("%d transient handles after %d signatures", n, *keySigs)
			}
			if tp.MaxLoaded() != 1 {
				t.Errorf("at most %d objects loaded at once, want 1", tp.MaxLoaded())
			}
		})
	})
}

// TestSwtpmKeys runs the key suite on swtpm and checks its results with
// openssl, tpm2-tools and the openssl tpm2 provider.
func TestSwtpmKeys(t *testing.T) {
	sw := startSwtpm(t)
	runKeySuite(t, sw.open)
	if _, err := exec.LookPath("tpm2_getcap"); err == nil {
		// Transient objects and sessions (the salted password sessions,
		// also after a wrong password) are all gone.
		for _, what := range []string{"handles-transient", "handles-loaded-session", "handles-saved-session"} {
			if out := sw.tools(t, t.TempDir(), "tpm2_getcap", what); strings.TrimSpace(out) != "" {
				t.Errorf("tpm2_getcap %s after the key suite: %s", what, out)
			}
		}
	}

	dir := t.TempDir()
	var ecc, rsaKey []byte
	use(t, sw.open, func(tp *TPM) {
		var err error
		if ecc, err = tp.CreateKey(KeyOptions{}); err != nil {
			t.Fatal(err)
		}
		if rsaKey, err = tp.CreateKey(KeyOptions{RSA: true}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("openssl verifies", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl is not installed")
		}
		for i, b := range [][]byte{ecc, rsaKey} {
			pub, _, sig := keySign(t, sw.open, b, nil, crypto.SHA256) // over "a manifest"
			der, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			pf := filepath.Join(dir, fmt.Sprintf("pub%d.pem", i))
			write(t, pf, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			write(t, filepath.Join(dir, "data"), []byte("a manifest"))
			write(t, filepath.Join(dir, "sig"), sig)
			out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", pf, "-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "data")).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Verified OK") {
				t.Fatalf("openssl dgst -verify: %v\n%s", err, out)
			}
		}
	})

	t.Run("another TPM refuses the key file", func(t *testing.T) {
		other := startSwtpm(t)
		provision(t, other.open)
		kf, err := ParseKeyFile(ecc)
		if err != nil {
			t.Fatal(err)
		}
		use(t, other.open, func(tp *TPM) {
			_, err := tp.Signer(kf, nil)
			if !errors.Is(err, ErrOtherTPM) || !strings.Contains(err.Error(), "this key file was made by another TPM") {
				t.Fatalf("load on another TPM: %v", err)
			}
		})
	})

	t.Run("openssl tpm2 provider signs with the key file", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl is not installed")
		}
		// The provider is a module in openssl's MODULESDIR.
		out, err := exec.Command("openssl", "version", "-m").Output()
		if err != nil {
			t.Fatalf("openssl version -m: %v", err)
		}
		modDir, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "MODULESDIR: ")
		if _, serr := os.Stat(filepath.Join(strings.Trim(modDir, `"`), "tpm2.so")); !ok || serr != nil {
			t.Skipf("the openssl tpm2 provider is not installed (apt-get install tpm2-openssl): no tpm2.so in %s", out)
		}
		kp := filepath.Join(dir, "product.tpmkey")
		write(t, kp, ecc)
		write(t, filepath.Join(dir, "data"), []byte("signed by openssl"))
		cmd := exec.Command("openssl", "pkeyutl", "-provider", "tpm2", "-provider", "default", "-propquery", "?provider=tpm2",
			"-sign", "-inkey", kp, "-rawin", "-digest", "sha256", "-in", filepath.Join(dir, "data"), "-out", filepath.Join(dir, "osig"))
		cmd.Env = append(os.Environ(), fmt.Sprintf("TPM2OPENSSL_TCTI=swtpm:host=127.0.0.1,port=%d", sw.port))
		out, err = cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openssl pkeyutl -provider tpm2 -sign: %v\n%s", err, out)
		}
		kf, err := ParseKeyFile(ecc)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("signed by openssl"))
		verifySig(t, kf.Public(), d[:], readFile(t, dir, "osig"), crypto.SHA256)
		if out := sw.tools(t, dir, "tpm2_getcap", "handles-transient"); strings.TrimSpace(out) != "" {
			t.Errorf("transient handles after openssl: %s", out)
		}
	})
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
