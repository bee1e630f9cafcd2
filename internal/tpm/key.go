package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"
	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/trust"
)

// Keys held by the TPM: a signing key created in (or imported into) the
// TPM under the SRK, stored as a TSS2 "TSS2 PRIVATE KEY" PEM file (the
// format of the openssl tpm2 provider, tpm2-tss-engine and the kernel's
// trusted keys). The file holds the key's public area and its private area
// encrypted by the SRK: it is useless without this TPM. The key is loaded
// for each signature and flushed right after, so no transient handle is
// left behind (swtpm and /dev/tpm0 have no resource manager).

// ErrOtherTPM: a key file does not load under this TPM's SRK.
var ErrOtherTPM = errors.New("this key file was made by another TPM")

// ErrKeyAuth: the key's authorization (password) was refused.
var ErrKeyAuth = errors.New("key authorization refused")

// ErrExists: a file or NV index to be written exists; the callers'
// replace (force) option replaces it.
var ErrExists = errors.New("exists")

// ErrNotTPMKey: a PEM file given as a TPM key holds another kind of key.
var ErrNotTPMKey = errors.New("not a TSS2 PRIVATE KEY")

// KeyOptions configure CreateKey and ImportKey.
type KeyOptions struct {
	RSA  bool   // RSA 2048 instead of ECC P-256 (CreateKey only)
	Auth []byte // the key's authorization value (password); none when empty
	// No description field is written: the openssl tpm2 provider (1.1.1,
	// Debian 12) refuses key files that carry one.
}

// MaxKeyAuth is the longest key authorization accepted (the SRK's name
// algorithm, SHA-256, limits authValue to 32 bytes).
const MaxKeyAuth = 32

func (o KeyOptions) check() error {
	if len(o.Auth) > MaxKeyAuth {
		return fmt.Errorf("key authorization is %d bytes, at most %d", len(o.Auth), MaxKeyAuth)
	}
	return nil
}

// signingKeyTemplate is the public area of a key created by CreateKey:
// generated in the TPM (sensitiveDataOrigin), bound to it (fixedTPM,
// fixedParent), a signing key with no fixed scheme (the caller picks
// ECDSA/RSASSA/RSAPSS and the hash per signature). Keys without a
// password are exempt from dictionary-attack counting.
func signingKeyTemplate(rsaKey, noDA bool) tpm2.TPMTPublic {
	attrs := tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, SignEncrypt: true, NoDA: noDA,
	}
	if rsaKey {
		return tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits:   2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
		}
	}
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// keyParent reads the SRK at SRKHandle and checks it is the standard ECC
// SRK vessel provisions (the parent of every key file vessel writes).
func (t *TPM) keyParent(op string) (tpm2.NamedHandle, tpm2.TPMTPublic, error) {
	srk, pub, err := t.srk()
	if err != nil {
		return srk, pub, fmt.Errorf("%s: %w", op, err)
	}
	if !isStandardSRK(pub) {
		return srk, pub, &tpmError{op: op, sentinel: ErrSRKMismatch,
			hint: "0x81000001 does not hold the TCG ECC P-256 storage root key vessel uses as the parent of key files"}
	}
	return srk, pub, nil
}

// CreateKey generates a signing key inside the TPM under the SRK and
// returns it as a TSS2 PEM key file. The private key never leaves the TPM
// unencrypted. The authorization value travels encrypted (a session salted
// by the SRK).
func (t *TPM) CreateKey(o KeyOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("create TPM key: %w", err)
	}
	srk, srkPub, err := t.keyParent("create TPM key")
	if err != nil {
		return nil, err
	}
	rsp, err := (tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: encSession(srkPub, nil)},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			UserAuth: tpm2.TPM2BAuth{Buffer: o.Auth},
		}},
		InPublic: tpm2.New2B(signingKeyTemplate(o.RSA, len(o.Auth) == 0)),
	}).Execute(t)
	if err != nil {
		return nil, classify("create TPM key under the SRK", err)
	}
	k := keyfile.NewTPMKey(keyfile.OIDLoadableKey, rsp.OutPublic, rsp.OutPrivate,
		keyfile.WithParent(SRKHandle), keyfile.WithUserAuth(o.Auth))
	return encodeKey(k)
}

// ImportKey wraps an existing ECDSA (P-256, P-384) or RSA 2048 private key
// to the SRK (TPM2_Import of a duplication blob encrypted to the SRK's
// public key, so the key crosses the bus encrypted) and returns the TSS2
// PEM key file. The original key is not changed: delete it afterwards if
// the TPM is to be its only holder.
func (t *TPM) ImportKey(priv crypto.Signer, o KeyOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("import key into TPM: %w", err)
	}
	var pk any
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("import key into TPM: ECDSA curve %s not supported (P-256, P-384)", k.Curve.Params().Name)
		}
		pk = *k
	case *rsa.PrivateKey:
		if k.N.BitLen() != 2048 {
			return nil, fmt.Errorf("import key into TPM: RSA key of %d bits not supported (2048)", k.N.BitLen())
		}
		pk = *k
	default:
		return nil, fmt.Errorf("import key into TPM: key type %T not supported (ECDSA or RSA)", priv)
	}
	srk, srkPub, err := t.keyParent("import key into TPM")
	if err != nil {
		return nil, err
	}
	opts := []keyfile.TPMKeyOption{keyfile.WithParent(SRKHandle)}
	if len(o.Auth) > 0 {
		opts = append(opts, keyfile.WithUserAuth(o.Auth))
	}
	// The wrapping is randomised (an ephemeral ECDH key and seed).
	// go-tpm-keyfiles encodes the ephemeral point's coordinates without
	// their leading zero bytes (FillBytes to len(x.Bytes())), so about one
	// wrapping in 128 gives the TPM a short coordinate, a different shared
	// secret and TPM_RC_INTEGRITY (seen in a full test run). A fresh
	// wrapping draws a new ephemeral key, so a key is wrapped again, at most
	// three times, before the error stands.
	var ik *keyfile.TPMKey
	var rsp *tpm2.ImportResponse
	for try := 1; ; try++ {
		if ik, err = keyfile.NewImportablekey(&srkPub, pk, opts...); err != nil {
			return nil, fmt.Errorf("import key into TPM: wrap to the SRK: %w", err)
		}
		rsp, err = (tpm2.Import{
			ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
			ObjectPublic: ik.Pubkey,
			Duplicate:    ik.Privkey,
			InSymSeed:    ik.Secret,
		}).Execute(t)
		if err == nil {
			break
		}
		if !errors.Is(err, tpm2.TPMRCIntegrity) || try == 3 {
			return nil, classify("import key into TPM", err)
		}
	}
	k := keyfile.NewTPMKey(keyfile.OIDLoadableKey, ik.Pubkey, rsp.OutPrivate,
		keyfile.WithParent(SRKHandle), keyfile.WithUserAuth(o.Auth))
	return encodeKey(k)
}

func encodeKey(k *keyfile.TPMKey) ([]byte, error) {
	var b bytes.Buffer
	if err := keyfile.Encode(&b, k); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// KeyFile is a parsed TSS2 key file.
type KeyFile struct {
	k   *keyfile.TPMKey
	pub crypto.PublicKey
}

// ParseKeyFile parses a TSS2 "TSS2 PRIVATE KEY" PEM file holding a
// loadable signing key.
func ParseKeyFile(b []byte) (*KeyFile, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("parse TPM key file: no PEM block found (want -----BEGIN TSS2 PRIVATE KEY-----)")
	}
	if blk.Type != "TSS2 PRIVATE KEY" {
		return nil, fmt.Errorf("parse TPM key file: PEM block %q is %w", blk.Type, ErrNotTPMKey)
	}
	k, err := keyfile.Parse(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse TPM key file: %w", err)
	}
	if !k.Keytype.Equal(keyfile.OIDLoadableKey) {
		return nil, fmt.Errorf("parse TPM key file: key type %v is not a loadable key (%v)", k.Keytype, keyfile.OIDLoadableKey)
	}
	if len(k.Policy) > 0 || len(k.AuthPolicy) > 0 {
		return nil, errors.New("parse TPM key file: keys with policies are not supported")
	}
	p, err := k.Pubkey.Contents()
	if err != nil {
		return nil, fmt.Errorf("parse TPM key file: public area: %w", err)
	}
	if !p.ObjectAttributes.SignEncrypt {
		return nil, errors.New("parse TPM key file: not a signing key")
	}
	pub, err := tpm2.Pub(*p)
	if err != nil {
		return nil, fmt.Errorf("parse TPM key file: public key: %w", err)
	}
	return &KeyFile{k: k, pub: pub}, nil
}

// Public returns the key's public key (*ecdsa.PublicKey or *rsa.PublicKey).
func (f *KeyFile) Public() crypto.PublicKey { return f.pub }

// NeedsAuth reports whether the key has an authorization value (password).
func (f *KeyFile) NeedsAuth() bool { return !f.k.EmptyAuth }

// Parent returns the parent handle recorded in the file.
func (f *KeyFile) Parent() uint32 { return uint32(f.k.Parent) }

// Description returns the description stored in the file.
func (f *KeyFile) Description() string { return f.k.Description }

// KeySigner is a crypto.Signer for a key file: each Sign loads the key
// under the SRK, signs and flushes it. It is not safe for concurrent use
// (neither is the *TPM).
type KeySigner struct {
	t    *TPM
	f    *KeyFile
	auth []byte
}

// Signer returns a signer for f using the TPM t, with authorization auth
// (nil for a key without one). It checks that the key loads (so a key file
// of another TPM fails here, not at the first signature) and flushes it.
func (t *TPM) Signer(f *KeyFile, auth []byte) (*KeySigner, error) {
	if f.NeedsAuth() && len(auth) == 0 {
		return nil, errors.New("TPM key: the key file needs its authorization (password)")
	}
	s := &KeySigner{t: t, f: f, auth: auth}
	if err := s.withKey(func(tpm2.NamedHandle, tpm2.TPMTPublic) error { return nil }); err != nil {
		return nil, err
	}
	return s, nil
}

// Public implements crypto.Signer.
func (s *KeySigner) Public() crypto.PublicKey { return s.f.pub }

// withKey loads the key under the SRK, calls use and flushes the key on
// every path.
func (s *KeySigner) withKey(use func(key tpm2.NamedHandle, srkPub tpm2.TPMTPublic) error) (err error) {
	if p := s.f.k.Parent; p != SRKHandle {
		return fmt.Errorf("load TPM key: the key file's parent is 0x%08x, vessel loads key files under its SRK at 0x%08x (create the key with `vessel tpm key create` or `vessel tpm key import`)", uint32(p), uint32(SRKHandle))
	}
	srk, srkPub, err := s.t.keyParent("load TPM key")
	if err != nil {
		return err
	}
	rsp, err := (tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.f.k.Privkey,
		InPublic:     s.f.k.Pubkey,
	}).Execute(s.t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCIntegrity) || errors.Is(err, tpm2.TPMRCSize) || errors.Is(err, tpm2.TPMRCValue) {
			return &tpmError{op: "load TPM key", sentinel: ErrOtherTPM, err: err,
				hint: "its private part does not unwrap under this TPM's storage root key (another machine's TPM, or this TPM was cleared); use the key file on the TPM that made it, or create or import a key here"}
		}
		return classify("load TPM key", err)
	}
	h := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	defer s.t.flush(h.Handle, &err)
	return use(h, srkPub)
}

// Sign implements crypto.Signer. ECDSA keys return an ASN.1 DER signature
// (as crypto/ecdsa does); RSA keys PKCS#1 v1.5, or PSS when opts is
// *rsa.PSSOptions (salt length equal to the hash length). digest must be
// a SHA-256, SHA-384 or SHA-512 digest.
func (s *KeySigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) (sig []byte, err error) {
	if opts == nil {
		return nil, errors.New("TPM key: sign: no hash given")
	}
	var halg tpm2.TPMIAlgHash
	switch opts.HashFunc() {
	case crypto.SHA256:
		halg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		halg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		halg = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("TPM key: sign: hash %v not supported (SHA-256, SHA-384, SHA-512)", opts.HashFunc())
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("TPM key: sign: digest is %d bytes, %v needs %d", len(digest), opts.HashFunc(), opts.HashFunc().Size())
	}
	var scheme tpm2.TPMTSigScheme
	switch s.f.pub.(type) {
	case *ecdsa.PublicKey:
		scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: halg})}
	case *rsa.PublicKey:
		alg := tpm2.TPMAlgRSASSA
		if p, ok := opts.(*rsa.PSSOptions); ok {
			if p.SaltLength != rsa.PSSSaltLengthEqualsHash && p.SaltLength != p.Hash.Size() && p.SaltLength != rsa.PSSSaltLengthAuto {
				return nil, errors.New("TPM key: sign: RSA-PSS salt length must equal the hash length")
			}
			alg = tpm2.TPMAlgRSAPSS
		}
		scheme = tpm2.TPMTSigScheme{Scheme: alg, Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: halg})}
	default:
		return nil, fmt.Errorf("TPM key: sign: key type %T not supported", s.f.pub)
	}
	err = s.withKey(func(h tpm2.NamedHandle, srkPub tpm2.TPMTPublic) error {
		// A key with a password is authorized by a one-shot HMAC session
		// salted by the SRK: the password never crosses the bus (go-tpm
		// flushes the session when the command fails).
		auth := tpm2.PasswordAuth(nil)
		if len(s.auth) > 0 {
			auth = tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(s.auth), tpm2.Salted(SRKHandle, srkPub))
		}
		rsp, err := (tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: auth},
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   scheme,
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}).Execute(s.t)
		if err != nil {
			if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
				return &tpmError{op: "sign with TPM key", sentinel: ErrKeyAuth, err: err,
					hint: "give the password the key was created with (each wrong try counts towards the TPM's dictionary-attack lockout)"}
			}
			return classify("sign with TPM key", err)
		}
		switch rsp.Signature.SigAlg {
		case tpm2.TPMAlgECDSA:
			e, err := rsp.Signature.Signature.ECDSA()
			if err != nil {
				return err
			}
			sig, err = asn1.Marshal(struct{ R, S *big.Int }{
				new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer),
			})
			return err
		case tpm2.TPMAlgRSASSA:
			r, err := rsp.Signature.Signature.RSASSA()
			if err != nil {
				return err
			}
			sig = r.Sig.Buffer
			return nil
		case tpm2.TPMAlgRSAPSS:
			r, err := rsp.Signature.Signature.RSAPSS()
			if err != nil {
				return err
			}
			sig = r.Sig.Buffer
			return nil
		}
		return fmt.Errorf("TPM returned a signature of algorithm 0x%04x", uint16(rsp.Signature.SigAlg))
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// maxKeyFile bounds a key file read from disk (an RSA 2048 key file is
// about 1.5 KiB).
const maxKeyFile = 64 << 10

// KeyOpener opens TSS2 key files on a TPM; it implements trust.KeyOpener,
// so `--key tpm:FILE` works wherever a PEM key does.
type KeyOpener struct {
	Device string                 // the TPM, as for Open
	Auth   func() ([]byte, error) // the key's password; called only for keys that have one
}

// OpenKey reads the key file at path, opens the TPM and checks that the
// key loads there. Closing the closer closes the TPM connection.
func (o KeyOpener) OpenKey(path string) (crypto.Signer, io.Closer, error) {
	b, err := bounded.ReadFile(path, maxKeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read TPM key file: %w", err)
	}
	kf, err := ParseKeyFile(b)
	if err != nil {
		return nil, nil, err
	}
	var auth []byte
	if kf.NeedsAuth() {
		if o.Auth == nil {
			return nil, nil, errors.New("the key file needs its authorization (password) and none was given")
		}
		if auth, err = o.Auth(); err != nil {
			return nil, nil, fmt.Errorf("key authorization: %w", err)
		}
	}
	t, err := Open(o.Device)
	if err != nil {
		return nil, nil, err
	}
	s, err := t.Signer(kf, auth)
	if err != nil {
		return nil, nil, errors.Join(err, t.Close())
	}
	return s, t, nil
}

// KeyFileResult describes a key file written by CreateKeyFile or
// ImportKeyFile.
type KeyFileResult struct {
	File      string `json:"file"`
	Type      string `json:"type"` // "ecc-p256", "ecc-p384" or "rsa-2048"
	Auth      bool   `json:"auth"` // the key has an authorization value
	Parent    string `json:"parent"`
	PublicKey string `json:"publicKey"` // PEM (PKIX)
}

// CreateKeyFile creates a key in the TPM (CreateKey) and writes its key
// file to path, mode 0600. An existing file is an error unless force.
func (t *TPM) CreateKeyFile(path string, o KeyOptions, force bool) (*KeyFileResult, error) {
	if err := checkNew(path, force); err != nil {
		return nil, fmt.Errorf("create TPM key: %w", err)
	}
	b, err := t.CreateKey(o)
	if err != nil {
		return nil, err
	}
	return writeKeyFile(path, b)
}

// ImportKeyFile wraps the PEM private key at keyPath to the TPM
// (ImportKey) and writes the key file to path, mode 0600. An existing
// file is an error unless force.
func (t *TPM) ImportKeyFile(keyPath, path string, o KeyOptions, force bool) (*KeyFileResult, error) {
	if err := checkNew(path, force); err != nil {
		return nil, fmt.Errorf("import key into TPM: %w", err)
	}
	k, err := trust.LoadKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("import key into TPM: %w", err)
	}
	b, err := t.ImportKey(k, o)
	if err != nil {
		return nil, err
	}
	return writeKeyFile(path, b)
}

func checkNew(path string, force bool) error {
	if path == "" {
		return errors.New("no output file given")
	}
	if _, err := os.Lstat(path); err == nil && !force {
		return fmt.Errorf("%s %w", path, ErrExists)
	}
	return nil
}

func writeKeyFile(path string, b []byte) (*KeyFileResult, error) {
	kf, err := ParseKeyFile(b)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write TPM key file: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(kf.pub)
	if err != nil {
		return nil, err
	}
	r := &KeyFileResult{File: path, Auth: kf.NeedsAuth(), Parent: fmt.Sprintf("0x%08x", kf.Parent()),
		PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
	switch k := kf.pub.(type) {
	case *ecdsa.PublicKey:
		r.Type = "ecc-" + strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))
	case *rsa.PublicKey:
		r.Type = fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return r, nil
}

var _ trust.KeyOpener = KeyOpener{}
