package tpm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// MaxSecret is the largest secret the TPM seals (MAX_SYM_DATA).
const MaxSecret = 128

// Seal seals secret as name in the state directory, under the provisioned
// policy (signed PCR7 policy or recovery secret). No authorization is
// needed and no policy is checked: anyone may seal, only a correctly
// booted machine may unseal. An existing name is replaced only if replace.
func (t *TPM) Seal(s State, name string, secret []byte, replace bool) error {
	path, err := s.sealedPath(name)
	if err != nil {
		return err
	}
	if len(secret) == 0 || len(secret) > MaxSecret {
		return fmt.Errorf("seal %s: secret is %d bytes, the TPM seals 1 to %d (seal a key, not a file)", name, len(secret), MaxSecret)
	}
	if !replace {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("seal %s: %s %w", name, path, ErrExists)
		}
	}
	r, err := s.Record()
	if err != nil {
		return err
	}
	b, err := t.create(r, sealedTemplate(r.SealPolicy), secret)
	if err != nil {
		return fmt.Errorf("seal %s: %w", name, err)
	}
	b.Created = time.Now().UTC().Format(time.RFC3339)
	return s.writeJSON(path, b)
}

// Unseal returns the secret sealed as name. p is a signed policy; if
// recovery is not nil it is used instead (the recovery secret's bytes,
// see ParseRecovery).
func (t *TPM) Unseal(s State, name string, p *SignedPolicy, recovery []byte) ([]byte, error) {
	path, err := s.sealedPath(name)
	if err != nil {
		return nil, err
	}
	r, err := s.Record()
	if err != nil {
		return nil, err
	}
	b, err := s.readBlob(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("unseal %s: %w (looked for %s)", name, ErrNotFound, path)
	}
	if err != nil {
		return nil, err
	}
	out, err := t.unsealBlob(r, b, p, recovery)
	if err != nil {
		return nil, fmt.Errorf("unseal %s: %w", name, err)
	}
	return out, nil
}

func (t *TPM) unsealBlob(r *Record, b *Blob, p *SignedPolicy, recovery []byte) (out []byte, err error) {
	if p != nil {
		// Verify the signature and key before loading anything, so the
		// common mistakes cost no TPM object.
		if !equal(p.KeyName, r.PolicyKeyName) {
			return nil, &tpmError{op: "check policy", sentinel: ErrWrongPolicyKey, hint: hintWrongKey}
		}
	}
	// The sealed object is loaded after the policy key is flushed (inside
	// policyAuth), so at most one transient object is loaded at a time.
	err = t.policyAuth(r, p, recovery, true, func(sess tpm2.Session) (err error) {
		h, err := t.load(r, b)
		if err != nil {
			return err
		}
		defer t.flush(h.Handle, &err)
		rsp, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: sess}}).Execute(t)
		if err != nil {
			return err
		}
		out = rsp.OutData.Buffer
		return nil
	})
	return out, err
}

// Bump raises the TPM's policy version to p.Version, revoking every policy
// signed for an older version. p must be satisfiable now (it is used to
// unseal the owner authorization); with recovery != nil the recovery
// secret is used for that instead. Lowering the version is refused.
func (t *TPM) Bump(s State, p *SignedPolicy, to uint64, recovery []byte) error {
	r, err := s.Record()
	if err != nil {
		return err
	}
	cur, err := t.PolicyVersion()
	if err != nil {
		return err
	}
	if to <= cur {
		return fmt.Errorf("bump policy version: the TPM is at version %d already; give a higher one", cur)
	}
	if p != nil && p.Version < to {
		return fmt.Errorf("bump policy version to %d: the policy used to authorize it is for version %d and would itself be revoked: sign one for version %d first", to, p.Version, to)
	}
	a, err := t.adminAuth(s, r, p, recovery)
	if err != nil {
		return err
	}
	srkPub, err := r.srkPublic()
	if err != nil {
		return err
	}
	_, err = (tpm2.NVWrite{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: encSession(srkPub, a.owner)},
		NVIndex:    tpm2.NamedHandle{Handle: VersionIndex, Name: nvName(versionNVPublic())},
		Data:       tpm2.TPM2BMaxNVBuffer{Buffer: be64(to)},
	}).Execute(t)
	return classify("write policy version", err)
}

// adminAuths are the hierarchy authorizations set at provisioning.
type adminAuths struct{ owner, endorsement, lockout []byte }

const authSize = 32

func (t *TPM) adminAuth(s State, r *Record, p *SignedPolicy, recovery []byte) (*adminAuths, error) {
	b, err := s.readBlob(s.path("admin.sealed"))
	if err != nil {
		return nil, fmt.Errorf("read sealed TPM authorizations: %w", err)
	}
	raw, err := t.unsealBlob(r, b, p, recovery)
	if err != nil {
		return nil, fmt.Errorf("unseal TPM authorizations: %w", err)
	}
	if len(raw) != 3*authSize {
		return nil, errors.New("unseal TPM authorizations: wrong size")
	}
	return &adminAuths{owner: raw[:authSize], endorsement: raw[authSize : 2*authSize], lockout: raw[2*authSize:]}, nil
}
