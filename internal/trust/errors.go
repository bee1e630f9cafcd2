package trust

import "errors"

// Sentinel errors. Verify returns a *VerifyError whose chain contains one of
// these, so callers can branch with errors.Is.
var (
	// ErrMalformed: the signed file or the manifest inside it does not parse
	// (bad JSON, duplicate or unknown keys, trailing data, oversize input).
	ErrMalformed = errors.New("malformed")
	// ErrUntrusted: the certificate chain does not lead to the given CA, or a
	// certificate has the wrong profile (CA used as leaf, wrong key usage).
	ErrUntrusted = errors.New("untrusted")
	// ErrExpired: a certificate (or the CRL) is expired or not yet valid at
	// the verification time. Errors with ErrExpired also match ErrUntrusted.
	ErrExpired = errors.New("expired or not yet valid")
	// ErrRevoked: a certificate in the chain is on the CA's revocation list.
	ErrRevoked = errors.New("revoked")
	// ErrBadSignature: the signature does not match the manifest bytes.
	ErrBadSignature = errors.New("bad signature")
	// ErrProductMismatch: the product ID of the certificate, the manifest and
	// the caller's expectation differ.
	ErrProductMismatch = errors.New("product mismatch")
	// ErrRollback: the manifest version is lower than the highest version
	// accepted (or the same version with different content).
	ErrRollback = errors.New("rollback")
	// ErrImageMismatch: a referenced image is missing from the store or is
	// not what the manifest says (no verity root hash, missing layer).
	ErrImageMismatch = errors.New("image mismatch")
	// ErrExists: a key file exists and overwriting was not requested.
	ErrExists = errors.New("already exists")
	// ErrNoCA: Verify was given no CA certificate to trust.
	ErrNoCA = errors.New("no CA certificate given")
	// ErrNoManifestCA: a keys directory has no (readable) manifest CA.
	ErrNoManifestCA = errors.New("no manifest-signing CA")
)

// VerifyError names the verification check that failed first.
type VerifyError struct {
	// Check is the failed check: "signed manifest", "ca",
	// "certificate profile", "certificate chain", "revocation", "signature",
	// "manifest", "product", "version" or "images".
	Check string
	// Kind is the sentinel (ErrUntrusted, ErrRevoked, ...).
	Kind error
	// Err is the underlying error.
	Err error
	// also lists further sentinels the error matches (ErrExpired).
	also []error
}

func (e *VerifyError) Error() string { return e.Check + ": " + e.Err.Error() }

// Unwrap lets errors.Is match the sentinel and the underlying error.
func (e *VerifyError) Unwrap() []error {
	return append([]error{e.Kind, e.Err}, e.also...)
}

func verr(check string, kind, err error, also ...error) *VerifyError {
	return &VerifyError{Check: check, Kind: kind, Err: err, also: also}
}

// msgError replaces an error's message while keeping it in the chain.
type msgError struct {
	msg string
	err error
}

func (e *msgError) Error() string { return e.msg }
func (e *msgError) Unwrap() error { return e.err }
