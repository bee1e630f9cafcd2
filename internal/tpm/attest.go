package tpm

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"io/fs"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// AK is the machine's attestation key: a restricted ECDSA P-256 signing
// key created in the TPM under the SRK. Restricted means the TPM signs only
// structures it produced itself (quotes, certifications), never an
// arbitrary digest, so a quote signed by it cannot be forged by software
// that can use the key. It needs no authorization (empty password, no
// PCR policy): it quotes after the boot's lock as well as before.
//
// Certification binds it to the identity key: TPM2_Certify, signed by the
// identity key, states that an object of this name is loaded in the same
// TPM and has these attributes (fixedTPM, restricted, sign).
type AK struct {
	Blob *Blob `json:"blob"`
	// Certification is the TPMS_ATTEST of TPM2_Certify over the AK, and
	// Signature the identity key's ASN.1 DER ECDSA signature over its
	// SHA-256.
	Certification Hex `json:"certification"`
	Signature     Hex `json:"signature"`
}

const akFile = "ak.json"

// akTemplate is the public area of the attestation key.
func akTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true,
		},
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

// ReadAK returns the certified attestation key kept in the state
// directory, or an error wrapping fs.ErrNotExist when there is none.
func (s State) ReadAK() (*AK, error) {
	var ak AK
	if err := s.readJSON(s.path(akFile), &ak); err != nil {
		return nil, fmt.Errorf("read attestation key: %w", err)
	}
	if ak.Blob == nil || ak.Blob.Format != blobFormat || len(ak.Certification) == 0 || len(ak.Signature) == 0 {
		return nil, fmt.Errorf("read attestation key %s: incomplete record", s.path(akFile))
	}
	return &ak, nil
}

// AttestationKey returns the state directory's certified attestation key;
// when there is none it creates one in the TPM and has id certify it
// (which needs the identity key's policy to be satisfied: before the
// boot's lock, or with the recovery secret). id may be nil when the key is
// known to exist.
func (t *TPM) AttestationKey(s State, id *Identity) (*AK, error) {
	ak, err := s.ReadAK()
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return ak, err
	}
	if id == nil {
		return nil, fmt.Errorf("no attestation key in %s and no identity key to certify a new one: %w", s.Dir, fs.ErrNotExist)
	}
	b, err := t.CreateAK(s)
	if err != nil {
		return nil, err
	}
	att, sig, err := id.Certify(b, nil)
	if err != nil {
		return nil, fmt.Errorf("certify attestation key: %w", err)
	}
	ak = &AK{Blob: b, Certification: att, Signature: sig}
	if err := s.writeJSON(s.path(akFile), ak); err != nil {
		return nil, fmt.Errorf("write attestation key: %w", err)
	}
	return ak, nil
}

// CreateAK creates an attestation key in the TPM under the SRK and returns
// its blob, uncertified (AttestationKey certifies and keeps it).
func (t *TPM) CreateAK(s State) (*Blob, error) {
	r, err := s.Record()
	if err != nil {
		return nil, err
	}
	b, err := t.create(r, akTemplate(), nil)
	if err != nil {
		return nil, fmt.Errorf("create attestation key: %w", err)
	}
	return b, nil
}

// Certify has the identity key certify obj (a blob created under the SRK,
// usable with an empty password) with TPM2_Certify: the returned attest is
// the TPMS_ATTEST naming obj, sig the identity key's ASN.1 DER ECDSA
// signature over its SHA-256. qualifying is carried in attest's extraData.
func (id *Identity) Certify(obj *Blob, qualifying []byte) (attest, sig []byte, err error) {
	err = id.session(func(sess tpm2.Session) (err error) {
		o, err := id.t.load(id.rec, obj)
		if err != nil {
			return err
		}
		defer id.t.flush(o.Handle, &err)
		h, err := id.t.load(id.rec, id.blob)
		if err != nil {
			return err
		}
		defer id.t.flush(h.Handle, &err)
		rsp, err := (tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: o.Handle, Name: o.Name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: sess},
			QualifyingData: tpm2.TPM2BData{Buffer: qualifying},
			InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		}).Execute(id.t)
		if err != nil {
			return err
		}
		attest = rsp.CertifyInfo.Bytes()
		sig, err = derSignature(rsp.Signature)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("certify with identity key: %w", err)
	}
	return attest, sig, nil
}

// Quote is a TPM2_Quote: the TPMS_ATTEST the TPM signed, the AK's ASN.1
// DER ECDSA signature over its SHA-256, and the sha256-bank values of the
// quoted PCRs, read right after the quote (a verifier checks them against
// the quote's PCR digest).
type Quote struct {
	Attest    Hex         `json:"attest"`
	Signature Hex         `json:"signature"`
	PCRs      map[int]Hex `json:"pcrs"`
}

// Quote has ak sign the sha256-bank values of pcrs with the verifier's
// nonce. It loads one object (the AK) and flushes it on every path.
func (t *TPM) Quote(s State, ak *AK, nonce []byte, pcrs []int) (q *Quote, err error) {
	r, err := s.Record()
	if err != nil {
		return nil, err
	}
	sel := make([]uint, 0, len(pcrs))
	for _, n := range pcrs {
		if n < 0 || n > 23 {
			return nil, fmt.Errorf("quote PCR %d: out of range 0-23", n)
		}
		sel = append(sel, uint(n))
	}
	h, err := t.load(r, ak.Blob)
	if err != nil {
		return nil, fmt.Errorf("load attestation key: %w", err)
	}
	defer t.flush(h.Handle, &err)
	rsp, err := (tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...),
		}}},
	}).Execute(t)
	if err != nil {
		return nil, classify("quote", err)
	}
	sig, err := derSignature(rsp.Signature)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	q = &Quote{Attest: rsp.Quoted.Bytes(), Signature: sig, PCRs: map[int]Hex{}}
	for _, n := range pcrs {
		v, err := t.PCR(n)
		if err != nil {
			return nil, err
		}
		q.PCRs[n] = v
	}
	return q, nil
}

// derSignature converts a TPM ECDSA signature to ASN.1 DER.
func derSignature(s tpm2.TPMTSignature) ([]byte, error) {
	e, err := s.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("signature is not ECDSA: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer),
	})
}
