package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/vesselos/vessel/internal/trust"
)

// PolicyFormat is the format tag of a signed policy file.
const PolicyFormat = "vessel-tpm-policy/v1"

// SignedPolicy is a policy file: "PCR7 (sha256 bank) must be PCR7 and the
// TPM's policy version must be <= Version", signed by the policy key.
//
// The TPM checks it as follows: TPM2_VerifySignature over
// sha256(ApprovedPolicy || policyRef="") with the public key gives a ticket;
// in a policy session TPM2_PolicyPCR(sha256:7) and TPM2_PolicyNV(VersionIndex
// <= Version) build ApprovedPolicy; TPM2_PolicyAuthorize(ticket) turns it into
// the digest every sealed object was created with. ApprovedPolicy is
// recomputed from PCR7 and Version on load; a file whose digest does not
// match its fields is refused.
type SignedPolicy struct {
	Format  string `json:"format"`
	PCR7    Hex    `json:"pcr7"`    // expected sha256-bank PCR7 value
	Version uint64 `json:"version"` // accepted while the TPM's policy version <= this
	// ApprovedPolicy is the policy digest the signature covers.
	ApprovedPolicy Hex `json:"approvedPolicy"`
	// PublicKey is the policy key (PKIX PEM); KeyName its TPM name.
	PublicKey string `json:"publicKey"`
	KeyName   Hex    `json:"keyName"`
	// Signature is an ASN.1 ECDSA signature over sha256(ApprovedPolicy).
	Signature Hex `json:"signature"`
	// Identity approves the identity key (only) for the PCR7 this
	// policy's PCR7 becomes after Lock, so the running system can still
	// sign with it once nothing can unseal (signed with policyRef
	// IdentityRef). Absent in files from before it existed.
	Identity *IdentityApproval `json:"identity,omitempty"`
	Created  string            `json:"created,omitempty"`
	Comment  string            `json:"comment,omitempty"`
}

// Hex is a byte string that marshals as lower-case hex.
type Hex []byte

func (h Hex) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }
func (h *Hex) UnmarshalText(b []byte) error {
	d, err := hex.DecodeString(string(b))
	if err != nil {
		return err
	}
	*h = d
	return nil
}
func (h Hex) String() string { return hex.EncodeToString(h) }

// pcr7Selection selects PCR 7 of the sha256 bank.
func pcr7Selection() tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(7),
	}}}
}

// versionNVPublic is the public area of the policy-version index once written.
func versionNVPublic() tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: VersionIndex,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true,
			NT: tpm2.TPMNTOrdinary, Written: true,
		},
		DataSize: 8,
	}
}

// recoveryNVPublic is the public area of the recovery index once written.
// It is subject to dictionary-attack protection: guessing the recovery
// secret locks the TPM out.
func recoveryNVPublic() tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: RecoveryIndex,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			AuthWrite: true, AuthRead: true, OwnerRead: true,
			NT: tpm2.TPMNTOrdinary, Written: true,
		},
		DataSize: 1,
	}
}

func nvName(p tpm2.TPMSNVPublic) tpm2.TPM2BName {
	n, err := tpm2.NVName(&p)
	if err != nil {
		panic(err) // fixed templates: cannot fail
	}
	return *n
}

// ApprovedPolicy computes the digest a policy key signs for PCR7 value pcr7
// (sha256 bank) and policy version v: PolicyPCR then PolicyNV.
func ApprovedPolicy(pcr7 []byte, v uint64) ([]byte, error) {
	if len(pcr7) != sha256.Size {
		return nil, fmt.Errorf("PCR7 value must be %d bytes (sha256 bank), got %d", sha256.Size, len(pcr7))
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	pcrDigest := sha256.Sum256(pcr7)
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest[:]}, Pcrs: pcr7Selection()}).Update(calc); err != nil {
		return nil, err
	}
	if err := policyNVCmd(0, v).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

func policyNVCmd(session tpm2.TPMHandle, v uint64) tpm2.PolicyNV {
	name := nvName(versionNVPublic())
	return tpm2.PolicyNV{
		AuthHandle:    tpm2.AuthHandle{Handle: VersionIndex, Name: name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:       tpm2.NamedHandle{Handle: VersionIndex, Name: name},
		PolicySession: session,
		OperandB:      tpm2.TPM2BOperand{Buffer: be64(v)},
		Offset:        0,
		Operation:     tpm2.TPMEOUnsignedLE,
	}
}

func be64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// SealPolicy computes the authPolicy of every sealed object and of the
// identity key for policy key name keyName:
// PolicyOR(PolicyAuthorize(keyName), PolicySecret(RecoveryIndex)).
// It returns the OR digest and its two branches.
func SealPolicy(keyName []byte) (digest []byte, branches [2][]byte, err error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, branches, err
	}
	if err := (tpm2.PolicyAuthorize{KeySign: tpm2.TPM2BName{Buffer: keyName}}).Update(calc); err != nil {
		return nil, branches, err
	}
	branches[0] = calc.Hash().Digest
	calc.Reset()
	rec := tpm2.AuthHandle{Handle: RecoveryIndex, Name: nvName(recoveryNVPublic())}
	if err := (tpm2.PolicySecret{AuthHandle: rec}).Update(calc); err != nil {
		return nil, branches, err
	}
	branches[1] = calc.Hash().Digest
	calc.Reset()
	or := tpm2.PolicyOr{PHashList: tpm2.TPMLDigest{Digests: []tpm2.TPM2BDigest{{Buffer: branches[0]}, {Buffer: branches[1]}}}}
	if err := or.Update(calc); err != nil {
		return nil, branches, err
	}
	return calc.Hash().Digest, branches, nil
}

// IdentityPolicy computes the authPolicy of the identity key for policy
// key name keyName: PolicyOR(PolicyAuthorize(keyName), PolicyAuthorize(keyName,
// policyRef IdentityRef), PolicySecret(RecoveryIndex)). The first branch is
// the one sealed objects have (usable before the lock); the second takes
// the identity approvals, which are signed for the locked PCR7.
func IdentityPolicy(keyName []byte) (digest []byte, branches [3][]byte, err error) {
	_, seal, err := SealPolicy(keyName)
	if err != nil {
		return nil, branches, err
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, branches, err
	}
	if err := (tpm2.PolicyAuthorize{KeySign: tpm2.TPM2BName{Buffer: keyName}, PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(IdentityRef)}}).Update(calc); err != nil {
		return nil, branches, err
	}
	branches = [3][]byte{seal[0], calc.Hash().Digest, seal[1]}
	calc.Reset()
	or := tpm2.PolicyOr{PHashList: tpm2.TPMLDigest{Digests: []tpm2.TPM2BDigest{{Buffer: branches[0]}, {Buffer: branches[1]}, {Buffer: branches[2]}}}}
	if err := or.Update(calc); err != nil {
		return nil, branches, err
	}
	return calc.Hash().Digest, branches, nil
}

// policyKeyPublic is the TPM public area vessel loads a policy key as
// (ECC P-256, signing, no scheme restriction): its name is what sealed
// objects are bound to.
func policyKeyPublic(pub *ecdsa.PublicKey) (tpm2.TPMTPublic, error) {
	if pub.Curve != elliptic.P256() {
		return tpm2.TPMTPublic{}, errors.New("policy key must be ECDSA P-256")
	}
	raw, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
		}),
	}, nil
}

// PolicyKeyName returns the TPM name (sha256) of a policy public key.
func PolicyKeyName(pub *ecdsa.PublicKey) ([]byte, error) {
	p, err := policyKeyPublic(pub)
	if err != nil {
		return nil, err
	}
	n, err := tpm2.ObjectName(&p)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}

// SignPolicy signs a policy allowing PCR7 value pcr7 at policy version v.
func SignPolicy(key crypto.Signer, pcr7 []byte, v uint64) (*SignedPolicy, error) {
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("policy key must be ECDSA P-256")
	}
	approved, err := ApprovedPolicy(pcr7, v)
	if err != nil {
		return nil, err
	}
	name, err := PolicyKeyName(pub)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	aHash := sha256.Sum256(approved) // policyRef is empty
	sig, err := key.Sign(rand.Reader, aHash[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign policy: %w", err)
	}
	locked := lockedPCR7(pcr7)
	idApproved, err := ApprovedPolicy(locked, v)
	if err != nil {
		return nil, err
	}
	idSig, err := key.Sign(rand.Reader, approvalHash(idApproved, []byte(IdentityRef)), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign identity approval: %w", err)
	}
	return &SignedPolicy{
		Format: PolicyFormat, PCR7: pcr7, Version: v, ApprovedPolicy: approved,
		PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		KeyName:   name, Signature: sig,
		Identity: &IdentityApproval{PCR7: locked, ApprovedPolicy: idApproved, Signature: idSig},
		Created:  time.Now().UTC().Format(time.RFC3339),
	}, nil
}

// IdentityRef is the policyRef of identity approvals: a policy key's
// signature with it authorizes the identity key only. Sealed objects are
// bound to PolicyAuthorize with an empty policyRef, so such an approval
// never unseals anything.
const IdentityRef = "vessel-identity"

// IdentityApproval is the second signature of a policy file: PCR7 =
// Lock(policy PCR7) and the same version, signed with policyRef IdentityRef.
type IdentityApproval struct {
	PCR7           Hex `json:"pcr7"` // the policy's PCR7 after Lock
	ApprovedPolicy Hex `json:"approvedPolicy"`
	Signature      Hex `json:"signature"` // over sha256(approvedPolicy || "vessel-identity")
}

// LockedPCR7 is the sha256-bank PCR7 that Lock makes of pcr7.
func LockedPCR7(pcr7 []byte) []byte { return lockedPCR7(pcr7) }

// ParsePolicy decodes a policy file and checks that it is self-consistent:
// the digest matches PCR7 and Version, the key name matches the key and the
// signature verifies. The TPM checks all of it again at unseal.
func ParsePolicy(b []byte) (*SignedPolicy, error) {
	var p SignedPolicy
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("parse policy: %w", err)
	}
	if p.Format != PolicyFormat {
		return nil, fmt.Errorf("parse policy: format %q, want %q", p.Format, PolicyFormat)
	}
	want, err := ApprovedPolicy(p.PCR7, p.Version)
	if err != nil {
		return nil, fmt.Errorf("parse policy: %w", err)
	}
	if !equal(want, p.ApprovedPolicy) {
		return nil, errors.New("parse policy: approvedPolicy does not match pcr7 and version")
	}
	pub, err := p.Key()
	if err != nil {
		return nil, err
	}
	name, err := PolicyKeyName(pub)
	if err != nil {
		return nil, err
	}
	if !equal(name, p.KeyName) {
		return nil, errors.New("parse policy: keyName does not match publicKey")
	}
	aHash := sha256.Sum256(p.ApprovedPolicy)
	if !ecdsa.VerifyASN1(pub, aHash[:], p.Signature) {
		return nil, &tpmError{op: "verify policy signature", sentinel: ErrWrongPolicyKey, hint: "the policy file was altered or signed by another key"}
	}
	if id := p.Identity; id != nil {
		if !equal(id.PCR7, lockedPCR7(p.PCR7)) {
			return nil, errors.New("parse policy: identity approval is not for the policy's PCR7 after the lock")
		}
		want, err := ApprovedPolicy(id.PCR7, p.Version)
		if err != nil || !equal(want, id.ApprovedPolicy) {
			return nil, errors.New("parse policy: identity approvedPolicy does not match its pcr7 and the version")
		}
		if !ecdsa.VerifyASN1(pub, approvalHash(id.ApprovedPolicy, []byte(IdentityRef)), id.Signature) {
			return nil, &tpmError{op: "verify identity approval signature", sentinel: ErrWrongPolicyKey, hint: "the policy file was altered or signed by another key"}
		}
	}
	return &p, nil
}

// ReadPolicy reads and parses a policy file.
func ReadPolicy(path string) (*SignedPolicy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return ParsePolicy(b)
}

// Key returns the policy's public key.
func (p *SignedPolicy) Key() (*ecdsa.PublicKey, error) {
	return parsePublicKeyPEM([]byte(p.PublicKey))
}

// Marshal encodes the policy file.
func (p *SignedPolicy) Marshal() []byte {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// tpmSignature converts an ASN.1 ECDSA signature to the TPM's form.
func tpmSignature(der []byte) (tpm2.TPMTSignature, error) {
	var s struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &s); err != nil {
		return tpm2.TPMTSignature{}, fmt.Errorf("policy signature: %w", err)
	}
	return tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: s.R.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.S.FillBytes(make([]byte, 32))},
		}),
	}, nil
}

func parsePublicKeyPEM(b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("policy key: no PEM block")
	}
	var k any
	var err error
	switch blk.Type {
	case "PUBLIC KEY":
		k, err = x509.ParsePKIXPublicKey(blk.Bytes)
	case "CERTIFICATE":
		var c *x509.Certificate
		c, err = x509.ParseCertificate(blk.Bytes)
		if err == nil {
			k = c.PublicKey
		}
	default:
		return nil, fmt.Errorf("policy key: PEM block %q, want PUBLIC KEY or CERTIFICATE", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("policy key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("policy key must be ECDSA P-256")
	}
	return pub, nil
}

// ParsePrivateKeyPEM reads an ECDSA P-256 private key (PKCS#8 or SEC 1 PEM).
func ParsePrivateKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	k, err := trust.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("policy key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("policy key must be ECDSA P-256")
	}
	return ek, nil
}

// ParsePublicKeyPEM reads an ECDSA P-256 public key (PKIX PEM or a certificate).
func ParsePublicKeyPEM(b []byte) (*ecdsa.PublicKey, error) { return parsePublicKeyPEM(b) }

func equal(a, b []byte) bool { return string(a) == string(b) }
