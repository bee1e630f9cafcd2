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
	err = id.t.policyAuth(id.rec, id.policy, id.recovery, false, func(sess tpm2.Session) (err error) {
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

// CSR returns a DER certificate request for the identity key with subject
// common name cn, signed by the key in the TPM.
func (id *Identity) CSR(cn string) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: cn},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, id)
}
