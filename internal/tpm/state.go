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
