// Package tpm provisions a TPM 2.0 for vessel, seals secrets under signed
// PCR7 policies and keeps the machine's identity key.
//
// The model (docs/tpm.md has the long version):
//
//   - A storage root key (SRK, the TCG ECC P-256 template) lives at
//     SRKHandle and is reused by every object vessel creates.
//   - Secrets are sealed under a policy that a policy-signing key authorizes
//     (TPM2_PolicyAuthorize), so a new PCR7 value after a firmware or dbx
//     update needs one newly signed policy file, not a re-seal.
//   - Each signed policy also carries a policy version that the TPM checks
//     against an NV index (VersionIndex) with TPM2_PolicyNV: raising the
//     index revokes every older signed policy.
//   - A recovery secret, printed once by Provision, satisfies a second
//     branch of every sealed object's policy (TPM2_PolicySecret on
//     RecoveryIndex), for when no signed policy matches the machine.
//
// Callers open a TPM with Open, then use the functions of this package on
// the returned *TPM; state that lives outside the TPM (sealed blobs, the
// provisioning record) is kept in a State directory. Every function loads at
// most 3 transient objects at once and flushes every handle and session it
// created on every path, so it works without a resource manager.
//
// Errors wrap the TPM's own response code (usable with errors.Is against
// go-tpm's tpm2.TPMRC values) and one of the sentinels below.
package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Sentinels callers can branch on with errors.Is.
var (
	// ErrNoTPM: the TPM device or emulator could not be opened.
	ErrNoTPM = errors.New("no TPM")
	// ErrNoSRK: there is no storage root key at SRKHandle (not provisioned).
	ErrNoSRK = errors.New("no storage root key")
	// ErrSRKMismatch: the object at SRKHandle is not the standard ECC SRK.
	ErrSRKMismatch = errors.New("persistent handle holds a different key")
	// ErrPolicyMismatch: the current PCR7 is not the one the signed policy allows.
	ErrPolicyMismatch = errors.New("PCR7 does not match the signed policy")
	// ErrLocked: PCR7 is the policy's value extended by Lock: vessel tpm
	// lock ran in this boot, and nothing unseals until the next reboot.
	ErrLocked = errors.New("PCR7 was locked in this boot")
	// ErrRevokedPolicy: the signed policy's version is older than the TPM's policy version.
	ErrRevokedPolicy = errors.New("signed policy was revoked")
	// ErrWrongPolicyKey: the policy was signed by a key other than the provisioned one,
	// or its signature does not verify.
	ErrWrongPolicyKey = errors.New("policy not signed by the provisioned policy key")
	// ErrLockout: the TPM is in dictionary-attack lockout.
	ErrLockout = errors.New("TPM is in dictionary-attack lockout")
	// ErrNotProvisioned: the state directory has no provisioning record.
	ErrNotProvisioned = errors.New("TPM not provisioned by vessel")
	// ErrOwned: the TPM already has an owner authorization that vessel does not know.
	ErrOwned = errors.New("TPM already owned")
	// ErrBadRecovery: the recovery secret was refused.
	ErrBadRecovery = errors.New("recovery secret refused")
	// ErrNotFound: no sealed object of that name.
	ErrNotFound = errors.New("no such sealed object")
)

// Handles vessel uses. The NV indices sit in the owner range
// (0x01000000-0x013FFFFF is TCG "owner"; vessel uses 0x0156xxxx, "V").
const (
	// SRKHandle is where the storage root key is persisted (TCG provisioning guidance).
	SRKHandle = tpm2.TPMHandle(0x81000001)
	// VersionIndex holds the policy version: 8 bytes, big endian. A signed
	// policy for version V is accepted while the index is <= V.
	VersionIndex = tpm2.TPMHandle(0x01560001)
	// RecoveryIndex is a 1-byte NV index whose authorization value is the
	// recovery secret; PolicySecret on it is the recovery branch.
	RecoveryIndex = tpm2.TPMHandle(0x01560002)
)

// tpmError wraps a TPM failure with a sentinel and a hint for the user.
type tpmError struct {
	op       string // what vessel was doing
	sentinel error  // one of the Err* values, or nil
	hint     string // what to do next
	err      error  // the TPM's answer
}

func (e *tpmError) Error() string {
	s := e.op
	if e.sentinel != nil {
		s += ": " + e.sentinel.Error()
	}
	if e.err != nil {
		s += " (TPM said: " + e.err.Error() + ")"
	}
	if e.hint != "" {
		s += ": " + e.hint
	}
	return s
}

// Unwrap lets errors.Is match both the sentinel and the TPM response code.
func (e *tpmError) Unwrap() []error {
	var errs []error
	if e.sentinel != nil {
		errs = append(errs, e.sentinel)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

const (
	hintPCR = "was the machine booted with a kernel signed by another key? " +
		"sign a policy for the current PCR7 with `vessel tpm policy sign --from-current`"
	hintRevoked = "the TPM's policy version is newer than this policy's: sign a new policy with " +
		"`vessel tpm policy sign --version N` (N >= the version `vessel tpm info` shows)"
	hintLocked = "`vessel tpm lock` ran in this boot, after the policy's PCR7: nothing unseals until the next " +
		"reboot, by design (do not sign a policy for the locked PCR7: that would undo the lock)"
	hintWrongKey = "sign the policy with the key given to `vessel tpm provision --policy-key`"
	hintLockout  = "too many wrong authorizations: wait for the TPM's lockout interval to pass, " +
		"or clear the lockout with the lockout authorization (kept sealed by vessel)"
	hintNoSRK = "provision the TPM first with `vessel tpm provision --policy-key PUB.pem`"
)

// classify wraps err (an error from a TPM command) with a sentinel when the
// response code says something the user can act on.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, tpm2.TPMRCLockout):
		return &tpmError{op: op, sentinel: ErrLockout, hint: hintLockout, err: err}
	}
	return fmt.Errorf("%s: %w", op, err)
}
