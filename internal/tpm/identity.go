package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// Identity is the machine identity key: an ECDSA P-256 key created in the
// TPM at provisioning, whose private part never leaves it. It implements
// crypto.Signer; each Sign satisfies the same policy as an unseal (a signed
// PCR7 policy, or the recovery secret), so the key works only on a
// correctly booted machine.
type Identity struct {
	t        *TPM
	rec      *Record
	blob     *Blob
	pub      *ecdsa.PublicKey
	policy   *SignedPolicy
	recovery []byte
}

// Identity returns the machine identity key, authorized by policy p (or by
// the recovery secret if recovery is not nil).
func (t *TPM) Identity(s State, p *SignedPolicy, recovery []byte) (*Identity, error) {
	r, err := s.Record()
	if err != nil {
		return nil, err
	}
	b, err := s.readBlob(s.path("identity.key"))
	if err != nil {
		return nil, fmt.Errorf("read identity key: %w", err)
	}
	pub, err := blobECDSAPublic(b)
	if err != nil {
		return nil, err
	}
	return &Identity{t: t, rec: r, blob: b, pub: pub, policy: p, recovery: recovery}, nil
}

// IdentityPublic returns the identity public key without using the TPM.
func IdentityPublic(s State) (*ecdsa.PublicKey, error) {
	b, err := s.readBlob(s.path("identity.key"))
	if err != nil {
		return nil, fmt.Errorf("read identity key: %w", err)
	}
	return blobECDSAPublic(b)
}

func blobECDSAPublic(b *Blob) (*ecdsa.PublicKey, error) {
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](b.Public)
	if err != nil {
		return nil, fmt.Errorf("identity key public area: %w", err)
	}
	k, err := tpm2.Pub(*p)
	if err != nil {
		return nil, fmt.Errorf("identity key public area: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("identity key is not ECDSA")
	}
	return ek, nil
}

// Public implements crypto.Signer.
func (id *Identity) Public() crypto.PublicKey { return id.pub }

// Sign implements crypto.Signer: digest must be a SHA-256 digest. The
// signature is ASN.1 DER, as crypto/ecdsa returns.
func (id *Identity) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) (sig []byte, err error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, errors.New("identity key signs SHA-256 digests only")
	}
	err = id.session(func(sess tpm2.Session) (err error) {
		h, err := id.t.load(id.rec, id.blob)
		if err != nil {
			return err
		}
		defer id.t.flush(h.Handle, &err)
		rsp, err := (tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: sess},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}).Execute(id.t)
		if err != nil {
			return err
		}
		e, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return err
		}
		sig, err = asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sign with identity key: %w", err)
	}
	return sig, nil
}

// session runs the policy session for one use of the identity key. A key
// made before identity approvals existed has the sealed objects' policy
// and is used like a sealed object. Otherwise, with a signed policy, the
// current PCR7 picks the branch: the policy's PCR7 (before the lock) or
// its identity approval's (after it).
func (id *Identity) session(use func(tpm2.Session) error) error {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](id.blob.Public)
	if err != nil {
		return fmt.Errorf("identity key public area: %w", err)
	}
	if equal(pub.AuthPolicy.Buffer, id.rec.SealPolicy) {
		return id.t.policyAuth(id.rec, id.policy, id.recovery, false, use)
	}
	digest, branches, err := IdentityPolicy(id.rec.PolicyKeyName)
	if err != nil {
		return err
	}
	if !equal(pub.AuthPolicy.Buffer, digest) {
		return errors.New("identity key: its policy is neither vessel's identity policy nor the seal policy for the provisioned policy key")
	}
	if id.policy == nil && id.recovery == nil {
		return errors.New("identity key: need a signed policy or the recovery secret")
	}
	var a *approval
	if id.policy != nil {
		a = id.policy.sealApproval()
		if ia := id.policy.identityApproval(); ia != nil {
			if cur, err := id.t.PCR7(); err == nil && equal(cur, ia.pcr7) {
				a = ia
			}
		}
	}
	return id.t.policySession(id.rec, a, id.recovery, branches[:], false, use)
}

// CSR returns a DER certificate request for the identity key with subject
// common name cn, signed by the key in the TPM.
func (id *Identity) CSR(cn string) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: cn},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, id)
}
