package tpm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// flush flushes h and joins a failure into *err; use it with defer right
// after a handle or session is created, so it is flushed on every path.
func (t *TPM) flush(h tpm2.TPMHandle, err *error) {
	if _, ferr := (tpm2.FlushContext{FlushHandle: h}).Execute(t); ferr != nil {
		*err = errors.Join(*err, fmt.Errorf("flush handle 0x%08x: %w", uint32(h), ferr))
	}
}

// srk returns the SRK as a handle the package can use as a parent, with its
// public area; ErrNoSRK if there is none.
func (t *TPM) srk() (tpm2.NamedHandle, tpm2.TPMTPublic, error) {
	rsp, err := (tpm2.ReadPublic{ObjectHandle: SRKHandle}).Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, &tpmError{op: "read SRK at 0x81000001", sentinel: ErrNoSRK, err: err, hint: hintNoSRK}
		}
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, classify("read SRK", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, err
	}
	return tpm2.NamedHandle{Handle: SRKHandle, Name: rsp.Name}, *pub, nil
}

// isStandardSRK reports whether pub is the TCG ECC P-256 SRK template
// (ignoring the unique field, which holds the key).
func isStandardSRK(pub tpm2.TPMTPublic) bool {
	p := pub
	p.Unique = tpm2.ECCSRKTemplate.Unique
	return string(tpm2.Marshal(p)) == string(tpm2.Marshal(tpm2.ECCSRKTemplate))
}

// parent returns the SRK recorded at provisioning as a parent handle.
func (r *Record) parent() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: SRKHandle, Name: tpm2.TPM2BName{Buffer: r.SRKName}, Auth: tpm2.PasswordAuth(nil)}
}

func (r *Record) srkPublic() (tpm2.TPMTPublic, error) {
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](r.SRKPublic)
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("state: SRK public area: %w", err)
	}
	return *p, nil
}

// encSession returns a one-shot HMAC session salted with the SRK that
// encrypts the first command parameter (secrets, new authorizations), so
// they do not cross the bus in the clear. auth is the entity's authValue.
func encSession(srkPub tpm2.TPMTPublic, auth []byte) tpm2.Session {
	return tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth),
		tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(SRKHandle, srkPub))
}

// load loads a blob under the SRK. The caller defers t.flush(h.Handle, &err).
func (t *TPM) load(r *Record, b *Blob) (tpm2.NamedHandle, error) {
	rsp, err := (tpm2.Load{
		ParentHandle: r.parent(),
		InPrivate:    tpm2.TPM2BPrivate{Buffer: b.Private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public),
	}).Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return tpm2.NamedHandle{}, noSRK("load sealed object", err)
		}
		if errors.Is(err, tpm2.TPMRCIntegrity) {
			return tpm2.NamedHandle{}, &tpmError{op: "load sealed object", err: err,
				hint: "it was created under another SRK (the TPM was cleared or re-provisioned): restore the secret from its source and seal it again"}
		}
		return tpm2.NamedHandle{}, classify("load sealed object", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

// create creates an object under the SRK, with parameter encryption.
func (t *TPM) create(r *Record, tmpl tpm2.TPMTPublic, data []byte) (*Blob, error) {
	srkPub, err := r.srkPublic()
	if err != nil {
		return nil, err
	}
	parent := r.parent()
	parent.Auth = encSession(srkPub, nil)
	cmd := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}
	if data != nil {
		cmd.InSensitive = tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data}),
		}}
	}
	rsp, err := cmd.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, noSRK("create object under SRK", err)
		}
		return nil, classify("create object under SRK", err)
	}
	return &Blob{Format: blobFormat, Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}, nil
}

// sealedTemplate is the public area of a sealed data object.
func sealedTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, AdminWithPolicy: true, NoDA: true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}

// identityTemplate is the public area of the machine identity key: ECC
// P-256, ECDSA-SHA256, created in and bound to this TPM, usable only under
// the same policy as sealed secrets.
func identityTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			AdminWithPolicy: true, NoDA: true, SignEncrypt: true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// PCR7 reads PCR 7 of the sha256 bank.
func (t *TPM) PCR7() ([]byte, error) { return t.PCR(7) }

// PCR reads PCR n of the sha256 bank.
func (t *TPM) PCR(n int) ([]byte, error) {
	if n < 0 || n > 23 {
		return nil, fmt.Errorf("read PCR %d: out of range 0-23", n)
	}
	rsp, err := (tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(n)),
	}}}}).Execute(t)
	if err != nil {
		return nil, classify(fmt.Sprintf("read PCR %d", n), err)
	}
	if len(rsp.PCRValues.Digests) != 1 {
		return nil, fmt.Errorf("read PCR %d: the TPM has no sha256 PCR bank", n)
	}
	return rsp.PCRValues.Digests[0].Buffer, nil
}

// PolicyVersion reads the TPM's policy version (VersionIndex).
func (t *TPM) PolicyVersion() (uint64, error) {
	name := nvName(versionNVPublic())
	rsp, err := (tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: VersionIndex, Name: name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: VersionIndex, Name: name},
		Size:       8,
	}).Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return 0, &tpmError{op: "read policy version index 0x01560001", sentinel: ErrNotProvisioned, err: err, hint: hintNoSRK}
		}
		return 0, classify("read policy version", err)
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

// LockEvent is the data Lock extends PCR7 with (hashed per bank); a
// measurement log records it so a verifier can model the lock.
const LockEvent = "vessel: lock PCR7 for the rest of this boot"

// Lock extends PCR7 in every active bank, so no policy signed for this
// boot's PCR7 can be satisfied until the next reboot.
func (t *TPM) Lock() error { return t.Extend(7, []byte(LockEvent)) }

// Extend extends PCR n of every active bank with that bank's hash of data
// (banks Go cannot hash, such as SM3, are left alone).
func (t *TPM) Extend(n int, data []byte) error {
	if n < 0 || n > 23 {
		return fmt.Errorf("extend PCR %d: out of range 0-23", n)
	}
	banks, err := t.pcrBanks()
	if err != nil {
		return err
	}
	var vals tpm2.TPMLDigestValues
	for _, alg := range banks {
		h, err := alg.Hash()
		if err != nil {
			continue
		}
		d := h.New()
		d.Write(data)
		vals.Digests = append(vals.Digests, tpm2.TPMTHA{HashAlg: alg, Digest: d.Sum(nil)})
	}
	_, err = (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(n), Auth: tpm2.PasswordAuth(nil)},
		Digests:   vals,
	}).Execute(t)
	return classify(fmt.Sprintf("extend PCR %d", n), err)
}

// pcrBanks lists the hash algorithms of banks with at least one PCR allocated.
func (t *TPM) pcrBanks() ([]tpm2.TPMIAlgHash, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 16}).Execute(t)
	if err != nil {
		return nil, classify("list PCR banks", err)
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, err
	}
	var algs []tpm2.TPMIAlgHash
	for _, s := range sel.PCRSelections {
		for _, b := range s.PCRSelect {
			if b != 0 {
				algs = append(algs, s.Hash)
				break
			}
		}
	}
	return algs, nil
}

// approval is one signed PolicyAuthorize approval: "PCR7 = pcr7 and the
// policy version <= version", signed with policyRef ref.
type approval struct {
	pcr7, approved, sig, ref []byte
	version                  uint64
	keyName                  []byte
	key                      string // PEM
}

func (p *SignedPolicy) sealApproval() *approval {
	return &approval{pcr7: p.PCR7, approved: p.ApprovedPolicy, sig: p.Signature, version: p.Version, keyName: p.KeyName, key: p.PublicKey}
}

// identityApproval is the approval for the identity key after the lock,
// nil when the file carries none.
func (p *SignedPolicy) identityApproval() *approval {
	if p.Identity == nil {
		return nil
	}
	return &approval{pcr7: p.Identity.PCR7, approved: p.Identity.ApprovedPolicy, sig: p.Identity.Signature,
		ref: []byte(IdentityRef), version: p.Version, keyName: p.KeyName, key: p.PublicKey}
}

// policyAuth runs the policy session for a sealed object and calls use
// with it; the session is flushed on every path. With a signed policy p the
// TPM checks its signature (VerifySignature -> ticket), PCR7 (PolicyPCR),
// the policy version (PolicyNV) and the signer (PolicyAuthorize); with
// recovery != nil it checks the recovery secret (PolicySecret on
// RecoveryIndex). Both end with PolicyOR over the two branches.
//
// With encrypt, the session also encrypts the response's first parameter
// (the unsealed secret) with a key salted by the SRK.
func (t *TPM) policyAuth(r *Record, p *SignedPolicy, recovery []byte, encrypt bool, use func(tpm2.Session) error) (err error) {
	if p == nil && recovery == nil {
		return errors.New("unseal: need a signed policy or the recovery secret")
	}
	_, branches, err := SealPolicy(r.PolicyKeyName)
	if err != nil {
		return err
	}
	var a *approval
	if p != nil {
		a = p.sealApproval()
	}
	return t.policySession(r, a, recovery, branches[:], encrypt, use)
}

// policySession runs a policy session that satisfies one branch of the
// PolicyOR over branches: the approval a (signed PCR7 policy) or, if a is
// nil, the recovery secret (always the last branch).
func (t *TPM) policySession(r *Record, a *approval, recovery []byte, branches [][]byte, encrypt bool, use func(tpm2.Session) error) (err error) {
	var ticket tpm2.TPMTTKVerified
	if a != nil {
		if !equal(a.keyName, r.PolicyKeyName) {
			return &tpmError{op: "check policy", sentinel: ErrWrongPolicyKey, hint: hintWrongKey}
		}
		if ticket, err = t.verifyPolicy(a); err != nil {
			return err
		}
	}
	srkPub, err := r.srkPublic()
	if err != nil {
		return err
	}
	opts := []tpm2.AuthOption{tpm2.Salted(SRKHandle, srkPub)}
	if encrypt {
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptOut))
	}
	sess, closeSess, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 16, opts...)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return noSRK("start policy session salted with the SRK", err)
		}
		return classify("start policy session", err)
	}
	defer func() {
		if cerr := closeSess(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("flush policy session: %w", cerr))
		}
	}()
	if a != nil {
		pcrDigest := sha256.Sum256(a.pcr7)
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest[:]}, Pcrs: pcr7Selection()}).Execute(t); err != nil {
			return t.explainPCR(a, err)
		}
		if _, err := policyNVCmd(sess.Handle(), a.version).Execute(t); err != nil {
			return t.explainVersion(a, err)
		}
		if _, err := (tpm2.PolicyAuthorize{
			PolicySession:  sess.Handle(),
			ApprovedPolicy: tpm2.TPM2BDigest{Buffer: a.approved},
			PolicyRef:      tpm2.TPM2BDigest{Buffer: a.ref},
			KeySign:        tpm2.TPM2BName{Buffer: a.keyName},
			CheckTicket:    ticket,
		}).Execute(t); err != nil {
			return &tpmError{op: "PolicyAuthorize", sentinel: ErrWrongPolicyKey, err: err, hint: hintWrongKey}
		}
	} else {
		name := nvName(recoveryNVPublic())
		if _, err := (tpm2.PolicySecret{
			AuthHandle:    tpm2.AuthHandle{Handle: RecoveryIndex, Name: name, Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(recovery))},
			PolicySession: sess.Handle(),
		}).Execute(t); err != nil {
			if errors.Is(err, tpm2.TPMRCLockout) {
				return classify("check recovery secret", err)
			}
			if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
				return &tpmError{op: "check recovery secret", sentinel: ErrBadRecovery, err: err,
					hint: "type the secret printed by `vessel tpm provision` (each wrong try counts towards the TPM's dictionary-attack lockout)"}
			}
			return classify("check recovery secret", err)
		}
	}
	var list tpm2.TPMLDigest
	for _, b := range branches {
		list.Digests = append(list.Digests, tpm2.TPM2BDigest{Buffer: b})
	}
	if _, err := (tpm2.PolicyOr{PolicySession: sess.Handle(), PHashList: list}).Execute(t); err != nil {
		return &tpmError{op: "PolicyOR", sentinel: ErrWrongPolicyKey, err: err,
			hint: "this TPM was provisioned with another policy key or recovery index"}
	}
	if err := use(sess); err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return &tpmError{op: "use sealed object", sentinel: ErrWrongPolicyKey, err: err,
				hint: "the object was sealed for another policy key: " + hintWrongKey}
		}
		return err
	}
	return nil
}

// verifyPolicy has the TPM verify the policy signature: LoadExternal of
// the public key in the owner hierarchy (a NULL-hierarchy key would give a
// NULL ticket, which PolicyAuthorize refuses), VerifySignature over
// sha256(approvedPolicy || policyRef), flush.
func (t *TPM) verifyPolicy(a *approval) (ticket tpm2.TPMTTKVerified, err error) {
	pub, err := parsePublicKeyPEM([]byte(a.key))
	if err != nil {
		return ticket, err
	}
	tp, err := policyKeyPublic(pub)
	if err != nil {
		return ticket, err
	}
	sig, err := tpmSignature(a.sig)
	if err != nil {
		return ticket, err
	}
	lrsp, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(tp), Hierarchy: tpm2.TPMRHOwner}).Execute(t)
	if err != nil {
		return ticket, classify("load policy key", err)
	}
	defer t.flush(lrsp.ObjectHandle, &err)
	aHash := approvalHash(a.approved, a.ref)
	vrsp, err := (tpm2.VerifySignature{
		KeyHandle: tpm2.NamedHandle{Handle: lrsp.ObjectHandle, Name: lrsp.Name},
		Digest:    tpm2.TPM2BDigest{Buffer: aHash},
		Signature: sig,
	}).Execute(t)
	if err != nil {
		return ticket, &tpmError{op: "verify policy signature in the TPM", sentinel: ErrWrongPolicyKey, err: err,
			hint: "the policy file was altered: sign it again"}
	}
	return vrsp.Validation, nil
}

// approvalHash is what a policy key signs: sha256(approvedPolicy || policyRef).
func approvalHash(approved, ref []byte) []byte {
	h := sha256.New()
	h.Write(approved)
	h.Write(ref)
	return h.Sum(nil)
}

// lockedPCR7 is the sha256-bank PCR7 that Lock makes of pcr7.
func lockedPCR7(pcr7 []byte) []byte {
	ev := sha256.Sum256([]byte(LockEvent))
	h := sha256.New()
	h.Write(pcr7)
	h.Write(ev[:])
	return h.Sum(nil)
}

func (t *TPM) explainPCR(p *approval, err error) error {
	cur, rerr := t.PCR7()
	if rerr == nil && equal(cur, lockedPCR7(p.pcr7)) {
		return &tpmError{op: fmt.Sprintf("PolicyPCR (current PCR7 %x is the policy's %x after vessel tpm lock)", cur, p.pcr7),
			sentinel: ErrLocked, err: fmt.Errorf("%w; %w", ErrPolicyMismatch, err), hint: hintLocked}
	}
	if rerr == nil && !equal(cur, p.pcr7) {
		return &tpmError{op: fmt.Sprintf("PolicyPCR (current PCR7 %x, policy allows %x)", cur, p.pcr7),
			sentinel: ErrPolicyMismatch, err: err, hint: hintPCR}
	}
	return &tpmError{op: "PolicyPCR", sentinel: ErrPolicyMismatch, err: err, hint: hintPCR}
}

func (t *TPM) explainVersion(p *approval, err error) error {
	if errors.Is(err, tpm2.TPMRCHandle) {
		return &tpmError{op: "PolicyNV", sentinel: ErrNotProvisioned, err: err, hint: hintNoSRK}
	}
	if cur, rerr := t.PolicyVersion(); rerr == nil {
		return &tpmError{op: fmt.Sprintf("PolicyNV (TPM policy version %d, policy signed for version %d)", cur, p.version),
			sentinel: ErrRevokedPolicy, err: err, hint: hintRevoked}
	}
	return &tpmError{op: "PolicyNV", sentinel: ErrRevokedPolicy, err: err, hint: hintRevoked}
}

// noSRK reports a missing SRK found while using it.
func noSRK(op string, err error) error {
	return &tpmError{op: op, sentinel: ErrNoSRK, err: err,
		hint: "nothing at 0x81000001: the TPM was cleared; restore secrets from their source and " + hintNoSRK}
}
