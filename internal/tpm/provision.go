package tpm

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// ProvisionOptions tune Provision.
type ProvisionOptions struct {
	// Force replaces an SRK with another template at SRKHandle and vessel's
	// NV indices if they exist. It never clears the TPM.
	Force bool
}

// Provisioned is what Provision reports.
type Provisioned struct {
	SRKReused bool   `json:"srkReused"`
	SRKName   Hex    `json:"srkName"`
	Version   uint64 `json:"policyVersion"`
	// Recovery is the recovery secret. It is shown once and kept nowhere.
	Recovery string `json:"recoverySecret"`
}

// Provision takes ownership of an unowned TPM for vessel, with policyKey as
// the key that signs PCR7 policies:
//
//  1. reuses the standard ECC SRK at SRKHandle or creates it (another key
//     there is reported, and replaced only with Force);
//  2. defines VersionIndex (policy version 1) and RecoveryIndex (whose
//     authorization is a fresh recovery secret);
//  3. creates the identity key under the SRK;
//  4. sets random owner, endorsement and lockout authorizations, sealed in
//     admin.sealed under the same policy as every secret.
//
// State files are written before the TPM's authorizations change.
func (t *TPM) Provision(s State, policyKey *ecdsa.PublicKey, o ProvisionOptions) (*Provisioned, error) {
	keyName, err := PolicyKeyName(policyKey)
	if err != nil {
		return nil, err
	}
	perm, err := t.property(tpm2.TPMPTPermanent)
	if err != nil {
		return nil, err
	}
	if perm&1 != 0 { // ownerAuthSet
		return nil, &tpmError{op: "provision", sentinel: ErrOwned,
			hint: "the TPM has an owner authorization (provisioned before?): to start over, clear it (`tpm2_clear -c p`, or from the firmware setup) and provision again"}
	}
	if perm&(1<<9) != 0 { // inLockout
		return nil, &tpmError{op: "provision", sentinel: ErrLockout, hint: hintLockout}
	}
	out := &Provisioned{Version: 1}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}

	// 1. SRK
	srk, srkPub, err := t.srk()
	switch {
	case err == nil && isStandardSRK(srkPub):
		out.SRKReused = true
	case err == nil:
		if !o.Force {
			return nil, &tpmError{op: "provision", sentinel: ErrSRKMismatch,
				hint: "0x81000001 holds a key that is not the standard ECC P-256 SRK; another tool may use it: replace it with --force"}
		}
		if _, err := (tpm2.EvictControl{Auth: owner, ObjectHandle: srk, PersistentHandle: SRKHandle}).Execute(t); err != nil {
			return nil, classify("evict old key at 0x81000001", err)
		}
		fallthrough
	case errors.Is(err, ErrNoSRK) || err == nil:
		if srk, srkPub, err = t.createSRK(owner); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	out.SRKName = srk.Name.Buffer
	enc := func(auth []byte) tpm2.Session { return encSession(srkPub, auth) }

	// 2. NV indices
	for _, idx := range []tpm2.TPMHandle{VersionIndex, RecoveryIndex} {
		if _, err := (tpm2.NVReadPublic{NVIndex: idx}).Execute(t); err == nil {
			if !o.Force {
				return nil, fmt.Errorf("provision: NV index 0x%08x %w (left by an earlier provisioning?)", uint32(idx), ErrExists)
			}
			if _, err := (tpm2.NVUndefineSpace{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: idx}}).Execute(t); err != nil {
				return nil, classify(fmt.Sprintf("undefine NV index 0x%08x", uint32(idx)), err)
			}
		}
	}
	secret, err := randomAuth(20)
	if err != nil {
		return nil, err
	}
	out.Recovery = formatRecovery(secret)
	if err := t.defineNV(tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: enc(nil)}, versionNVPublic(), nil,
		tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}, be64(1)); err != nil {
		return nil, err
	}
	if err := t.defineNV(tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: enc(nil)}, recoveryNVPublic(), secret,
		tpm2.AuthHandle{Handle: RecoveryIndex, Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(secret))}, []byte{1}); err != nil {
		return nil, err
	}

	// 3. record, identity key, sealed authorizations
	sealPolicy, _, err := SealPolicy(keyName)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(policyKey)
	if err != nil {
		return nil, err
	}
	r := &Record{
		Format: recordFormat, SRKPublic: tpm2.Marshal(srkPub), SRKName: srk.Name.Buffer,
		PolicyKey:     string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		PolicyKeyName: keyName, SealPolicy: sealPolicy,
		VersionIndex: uint32(VersionIndex), RecoveryIndex: uint32(RecoveryIndex),
		Provisioned: time.Now().UTC().Format(time.RFC3339),
	}
	id, err := t.create(r, identityTemplate(sealPolicy), nil)
	if err != nil {
		return nil, fmt.Errorf("create identity key: %w", err)
	}
	auths, err := randomAuth(3 * authSize)
	if err != nil {
		return nil, err
	}
	admin, err := t.create(r, sealedTemplate(sealPolicy), auths)
	if err != nil {
		return nil, fmt.Errorf("seal TPM authorizations: %w", err)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	id.Created, admin.Created = now, now
	if err := s.writeJSON(s.path("identity.key"), id); err != nil {
		return nil, err
	}
	if err := s.writeJSON(s.path("admin.sealed"), admin); err != nil {
		return nil, err
	}
	if err := s.writeJSON(s.path("state.json"), r); err != nil {
		return nil, err
	}

	// 4. take ownership: owner last, it authorizes nothing the others need.
	for i, h := range []tpm2.TPMHandle{tpm2.TPMRHEndorsement, tpm2.TPMRHLockout, tpm2.TPMRHOwner} {
		j := []int{1, 2, 0}[i] // owner, endorsement, lockout order in auths
		// The TPM computes this response's HMAC with the new value, which
		// go-tpm does not expect: authorize with the (empty) password and
		// encrypt the new value with a second, salted session.
		if _, err := (tpm2.HierarchyChangeAuth{
			AuthHandle: tpm2.AuthHandle{Handle: h, Auth: tpm2.PasswordAuth(nil)},
			NewAuth:    tpm2.TPM2BAuth{Buffer: auths[j*authSize : (j+1)*authSize]},
		}).Execute(t, enc(nil)); err != nil {
			return nil, classify(fmt.Sprintf("set authorization of hierarchy 0x%08x", uint32(h)), err)
		}
	}
	return out, nil
}

// randomAuth returns n random bytes none of which is zero: go-tpm v0.9.8
// truncates an HMAC key at any zero byte (hmacKeyFromAuthValue should trim
// only trailing zeros), which would make the TPM refuse such a value.
func randomAuth(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	for i := range b {
		for b[i] == 0 {
			if _, err := rand.Read(b[i : i+1]); err != nil {
				return nil, err
			}
		}
	}
	return b, nil
}

func (t *TPM) createSRK(owner tpm2.AuthHandle) (tpm2.NamedHandle, tpm2.TPMTPublic, error) {
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(t)
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, classify("create SRK", err)
	}
	var flushErr error
	defer t.flush(rsp.ObjectHandle, &flushErr)
	if _, err := (tpm2.EvictControl{Auth: owner, ObjectHandle: tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, PersistentHandle: SRKHandle}).Execute(t); err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, classify("persist SRK at 0x81000001", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, err
	}
	return tpm2.NamedHandle{Handle: SRKHandle, Name: rsp.Name}, *pub, flushErr
}

// defineNV defines an index (pub without the written bit) and writes data
// to it with writer's authorization.
func (t *TPM) defineNV(owner tpm2.AuthHandle, pub tpm2.TPMSNVPublic, auth []byte, writer tpm2.AuthHandle, data []byte) error {
	def := pub
	def.Attributes.Written = false
	if _, err := (tpm2.NVDefineSpace{AuthHandle: owner, Auth: tpm2.TPM2BAuth{Buffer: auth}, PublicInfo: tpm2.New2B(def)}).Execute(t); err != nil {
		return classify(fmt.Sprintf("define NV index 0x%08x", uint32(pub.NVIndex)), err)
	}
	idx := tpm2.NamedHandle{Handle: pub.NVIndex, Name: nvName(def)}
	if writer.Handle == pub.NVIndex {
		writer.Name = idx.Name
	}
	if _, err := (tpm2.NVWrite{AuthHandle: writer, NVIndex: idx, Data: tpm2.TPM2BMaxNVBuffer{Buffer: data}}).Execute(t); err != nil {
		return classify(fmt.Sprintf("write NV index 0x%08x", uint32(pub.NVIndex)), err)
	}
	rsp, err := (tpm2.NVReadPublic{NVIndex: pub.NVIndex}).Execute(t)
	if err != nil {
		return classify("read NV index back", err)
	}
	if want := nvName(pub); !equal(rsp.NVName.Buffer, want.Buffer) {
		return fmt.Errorf("NV index 0x%08x: the TPM names it %x, vessel computes %x", uint32(pub.NVIndex), rsp.NVName.Buffer, want.Buffer)
	}
	return nil
}

func (t *TPM) property(p tpm2.TPMPT) (uint32, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(p), PropertyCount: 1}).Execute(t)
	if err != nil {
		return 0, classify("read TPM property", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return 0, err
	}
	if len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != p {
		return 0, fmt.Errorf("TPM did not report property 0x%x", uint32(p))
	}
	return props.TPMProperty[0].Value, nil
}

var recoveryEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

// formatRecovery renders the recovery secret as 8 groups of 4 base32
// characters, easy to print on paper and type back.
func formatRecovery(b []byte) string {
	s := recoveryEnc.EncodeToString(b)
	var g []string
	for len(s) > 4 {
		g = append(g, s[:4])
		s = s[4:]
	}
	return strings.Join(append(g, s), "-")
}

// ParseRecovery turns a typed recovery secret back into its bytes; case,
// spaces and dashes do not matter.
func ParseRecovery(s string) ([]byte, error) {
	s = strings.ToUpper(strings.NewReplacer("-", "", " ", "", "\n", "", "\t", "").Replace(s))
	b, err := recoveryEnc.DecodeString(s)
	if err != nil || len(b) != 20 {
		return nil, errors.New("recovery secret: not the 32-character code `vessel tpm provision` printed")
	}
	return b, nil
}
