package tpm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/lazyre"
)

// State is the directory where vessel keeps what lives outside the TPM:
//
//	state.json          the provisioning record (Record)
//	admin.sealed        owner/endorsement/lockout authorizations, sealed
//	identity.key        the identity key's TPM blobs (usable only in this TPM)
//	sealed/NAME.sealed  sealed secrets
//	policy.signed       the default signed policy (optional, installed by the user)
//
// Every file is written atomically (temp file, fsync, rename, fsync dir).
// Sealed blobs are useless outside this TPM and without a satisfied policy,
// but are still written 0600.
type State struct{ Dir string }

// Record is the provisioning record, state.json.
type Record struct {
	Format string `json:"format"` // "vessel-tpm-state/v1"
	// SRKPublic is the marshalled TPMT_PUBLIC of the SRK (used to salt sessions).
	SRKPublic Hex    `json:"srkPublic"`
	SRKName   Hex    `json:"srkName"`
	PolicyKey string `json:"policyKey"` // PKIX PEM
	// PolicyKeyName is the TPM name sealed objects are bound to.
	PolicyKeyName Hex    `json:"policyKeyName"`
	SealPolicy    Hex    `json:"sealPolicy"` // authPolicy of sealed objects
	VersionIndex  uint32 `json:"versionIndex"`
	RecoveryIndex uint32 `json:"recoveryIndex"`
	Provisioned   string `json:"provisioned"`
}

// Blob is a TPM object created under the SRK: its public and private
// areas as TPM2B contents.
type Blob struct {
	Format  string `json:"format"` // "vessel-tpm-blob/v1"
	Public  Hex    `json:"public"`
	Private Hex    `json:"private"`
	Created string `json:"created,omitempty"`
}

const (
	recordFormat = "vessel-tpm-state/v1"
	blobFormat   = "vessel-tpm-blob/v1"
)

var nameRE = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (s State) path(parts ...string) string {
	return filepath.Join(append([]string{s.Dir}, parts...)...)
}

func (s State) sealedPath(name string) (string, error) {
	if !nameRE.MatchString(name) {
		return "", fmt.Errorf("sealed object name %q: use letters, digits, '.', '_' and '-'", name)
	}
	return s.path("sealed", name+".sealed"), nil
}

// Record reads state.json; ErrNotProvisioned if there is none.
func (s State) Record() (*Record, error) {
	var r Record
	if err := s.readJSON(s.path("state.json"), &r); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &tpmError{op: "read " + s.path("state.json"), sentinel: ErrNotProvisioned, hint: hintNoSRK + " (or select the state directory with --state)"}
		}
		return nil, err
	}
	if r.Format != recordFormat {
		return nil, fmt.Errorf("%s: format %q, want %q", s.path("state.json"), r.Format, recordFormat)
	}
	return &r, nil
}

func (s State) readBlob(path string) (*Blob, error) {
	var b Blob
	if err := s.readJSON(path, &b); err != nil {
		return nil, err
	}
	if b.Format != blobFormat {
		return nil, fmt.Errorf("%s: format %q, want %q", path, b.Format, blobFormat)
	}
	return &b, nil
}

// Sealed lists the names of the sealed objects.
func (s State) Sealed() ([]string, error) {
	ents, err := os.ReadDir(s.path("sealed"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".sealed"); ok {
			names = append(names, n)
		}
	}
	return names, nil
}

func (s State) readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

func (s State) writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(b, '\n'))
}

// writeAtomic writes data to path (0600) so a crash leaves either the old
// or the new file.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}

// PoliciesDir is where a machine keeps the signed policies shipped with its
// system (STATE/policies/*.signed; on a vessel disk, tpm/policies on the
// data partition, /var/lib/vessel/tpm/policies on the host).
const PoliciesDir = "policies"

// Policies reads STATE/policy.signed and STATE/policies/*.signed; files
// that do not parse are returned as errors beside the good ones.
func (s State) Policies() ([]*SignedPolicy, []error) {
	paths, _ := filepath.Glob(s.path(PoliciesDir, "*.signed"))
	if _, err := os.Stat(s.path("policy.signed")); err == nil {
		paths = append([]string{s.path("policy.signed")}, paths...)
	}
	var out []*SignedPolicy
	var errs []error
	for _, p := range paths {
		sp, err := ReadPolicy(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		sp.Comment = filepath.Base(p)
		out = append(out, sp)
	}
	return out, errs
}

// PolicyFor returns the highest-version policy of s (Policies) that
// authorizes use at PCR7 value pcr7: for a sealed object or the identity
// key when pcr7 is the policy's PCR7, for the identity key only when it is
// the policy's PCR7 after Lock (the running system after the initrd locked).
func (s State) PolicyFor(pcr7 []byte) (*SignedPolicy, error) {
	pols, errs := s.Policies()
	var best *SignedPolicy
	var seen []string
	for _, p := range pols {
		seen = append(seen, fmt.Sprintf("%s (PCR7 %x)", p.Comment, []byte(p.PCR7)))
		ok := equal(p.PCR7, pcr7) || p.Identity != nil && equal(p.Identity.PCR7, pcr7)
		if ok && (best == nil || p.Version > best.Version) {
			best = p
		}
	}
	if best != nil {
		return best, nil
	}
	if len(pols) == 0 {
		return nil, errors.Join(append([]error{fmt.Errorf("no signed policy in %s or %s", s.path("policy.signed"), s.path(PoliciesDir))}, errs...)...)
	}
	return nil, &tpmError{op: fmt.Sprintf("no signed policy for PCR7 %x among %s", pcr7, strings.Join(seen, ", ")), sentinel: ErrPolicyMismatch, hint: hintPCR}
}
