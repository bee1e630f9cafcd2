package trust

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"
)

// TPMKeyPrefix marks a key reference whose private key is held by a TPM:
// "tpm:FILE" names a TSS2 key file (see `vessel tpm key create`).
const TPMKeyPrefix = "tpm:"

// KeyOpener opens signing keys that are not PEM files. Package tpm
// implements it (tpm.KeyOpener); trust does not import tpm, so this
// package stays free of TPM code.
type KeyOpener interface {
	// OpenKey opens the key file at path. The signer is usable until the
	// closer is closed.
	OpenKey(path string) (crypto.Signer, io.Closer, error)
}

// LoadSigner opens the signing key ref names: "tpm:FILE" through tpm (a
// key held by a TPM), anything else as a PEM private key file (LoadKey).
// Call close when done signing: for a TPM key it closes the connection to
// the TPM. tpm may be nil when no TPM is available; a tpm: reference is
// then an error.
func LoadSigner(ref string, tpm KeyOpener) (key crypto.Signer, close func() error, err error) {
	noop := func() error { return nil }
	if path, ok := strings.CutPrefix(ref, TPMKeyPrefix); ok {
		if path == "" {
			return nil, nil, errors.New("key tpm: names no key file (tpm:FILE)")
		}
		if tpm == nil {
			return nil, nil, fmt.Errorf("key %s: TPM-held keys are not supported here", ref)
		}
		s, c, err := tpm.OpenKey(path)
		if err != nil {
			return nil, nil, fmt.Errorf("open TPM key %s: %w", path, err)
		}
		if c == nil {
			return s, noop, nil
		}
		return s, c.Close, nil
	}
	k, err := LoadKey(ref)
	if err != nil {
		return nil, nil, err
	}
	return k, noop, nil
}
