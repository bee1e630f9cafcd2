package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/vesselos/vessel/internal/boot/pcr7"
	"github.com/vesselos/vessel/internal/boot/tcglog"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/trust"
)

// Sentinels naming why a quote was refused; a refusal wraps every one that
// applies (errors.Is).
var (
	// Evidence that does not hold together: nothing in the report beyond
	// the failed step can be believed.
	ErrIdentity  = errors.New("identity certificate not issued by the machine CA")
	ErrAK        = errors.New("attestation key not certified by the identity key")
	ErrSignature = errors.New("quote signature does not verify")
	ErrNonce     = errors.New("quote was made for another nonce (replayed or stale)")
	ErrReplay    = errors.New("event log does not replay to the quoted PCRs")
	// Policy mismatches: the evidence is genuine but says something the
	// policy does not allow.
	ErrSecureBoot = errors.New("secure boot is off")
	ErrSigner     = errors.New("UKI verified by a db key the policy does not allow")
	ErrProduct    = errors.New("product does not match")
	ErrManifestCA = errors.New("manifest not signed under the manifest CA")
	ErrNotAllowed = errors.New("manifest not on the allow list")
	ErrNoManifest = errors.New("no verified manifest was measured")
)

// Policy is what a verifier accepts.
type Policy struct {
	// MachineCAs anchor identity certificates (required).
	MachineCAs []*x509.Certificate
	// ManifestCAs, when set, must anchor the signed manifest the quote
	// carries, whose digest must be the measured one.
	ManifestCAs []*x509.Certificate
	// ProductID, when set, must be the identity certificate's product and
	// the measured manifest's.
	ProductID string
	// AllowManifests, when set, lists the manifest digests
	// (sha256:<hex>, or bare hex) that may run.
	AllowManifests []string
	// UKISigners, when set, are the db certificates allowed to have
	// verified the boot image: every EV_EFI_VARIABLE_AUTHORITY event must
	// name one of them.
	UKISigners []*x509.Certificate
	// Revoked are identity certificate serials refused (see ReadRevoked).
	Revoked []*big.Int
	// AllowSecureBootOff accepts a machine with Secure Boot off (its
	// manifest measurement then proves little; off by default).
	AllowSecureBootOff bool
	// At is the verification time; time.Now when zero.
	At time.Time
}

// Check is one step of a verification.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	err    error
}

// Manifest is what vessel's log says the initrd verified.
type Manifest struct {
	Digest    string `json:"digest"`
	ProductID string `json:"productId"`
	Version   int64  `json:"version"`
	// Signer is the product certificate's subject, when the quote
	// carried the signed manifest and it verified.
	Signer string `json:"signer,omitempty"`
}

// Report is what a verified quote says about the machine. Fields are
// filled only from evidence that passed the checks before them.
type Report struct {
	OK             bool   `json:"ok"`
	MachineID      string `json:"machineId,omitempty"`
	ProductID      string `json:"productId,omitempty"`
	IdentitySerial string `json:"identitySerial,omitempty"`
	SecureBoot     bool   `json:"secureBoot"`
	// UKISigners are the db certificates (subjects) that verified boot
	// images, from the firmware log's authority events.
	UKISigners []string  `json:"ukiSigners,omitempty"`
	Manifest   *Manifest `json:"manifest,omitempty"`
	// Locked: vessel's log records the PCR7 lock (nothing unseals after it).
	Locked bool           `json:"locked"`
	PCRs   map[int]string `json:"pcrs,omitempty"`
	Checks []Check        `json:"checks"`
	// Identity is the verified identity certificate (not in JSON).
	Identity *x509.Certificate `json:"-"`
}

// Error is a refusal: every failed check, by name.
type Error struct{ Failed []Check }

func (e *Error) Error() string {
	var parts []string
	for _, c := range e.Failed {
		parts = append(parts, c.Name+": "+c.Detail)
	}
	return "attestation refused: " + strings.Join(parts, "; ")
}

// Unwrap lets errors.Is find each failed check's sentinel.
func (e *Error) Unwrap() []error {
	var errs []error
	for _, c := range e.Failed {
		if c.err != nil {
			errs = append(errs, c.err)
		}
	}
	return errs
}

// Verify checks q against nonce and policy p. It returns the report and,
// when any check failed, an *Error naming every failure. The checks, in
// order (the first five stop at the first failure, the policy checks are
// all made):
//
//	identity      chain to a machine CA, clientAuth, not revoked, machine and product ID
//	ak            AK attributes (fixedTPM, restricted signing key), TPM2_Certify by the identity key
//	quote         AK signature over the quote, the PCR selection, the PCR values' digest
//	nonce         the quote's qualifying data is the verifier's nonce
//	replay        firmware log -> PCRs 0-7 (PCR7 then vessel's lock), vessel's log -> PCR 15
//	secure-boot   the firmware measured SecureBoot=1
//	uki-signer    every db authority event names an allowed certificate
//	product       identity product == policy product == measured manifest's product
//	manifest-ca   the carried signed manifest verifies under the manifest CA and is the measured one
//	allow-list    the measured manifest digest is allowed
func Verify(q *Quote, nonce []byte, p Policy) (*Report, error) {
	v := &verifier{q: q, p: p, r: &Report{}}
	if v.p.At.IsZero() {
		v.p.At = time.Now()
	}
	_ = v.step("identity", ErrIdentity, v.identity) &&
		v.step("ak", ErrAK, v.ak) &&
		v.step("quote", ErrSignature, v.quote) &&
		v.step("nonce", ErrNonce, func() (string, error) { return v.nonce(nonce) }) &&
		v.step("replay", ErrReplay, v.replay) &&
		v.policy()
	var failed []Check
	for _, c := range v.r.Checks {
		if !c.OK {
			failed = append(failed, c)
		}
	}
	v.r.OK = len(failed) == 0
	if !v.r.OK {
		return v.r, &Error{Failed: failed}
	}
	return v.r, nil
}

type verifier struct {
	q          *Quote
	p          Policy
	r          *Report
	idPub      *ecdsa.PublicKey
	akPub      *ecdsa.PublicKey
	fw         *tcglog.Log
	events     []measure.Event
	pcrs       map[int][]byte
	quoteNonce []byte
}

// step runs f as check name; a failure is recorded with sentinel.
func (v *verifier) step(name string, sentinel error, f func() (string, error)) bool {
	detail, err := f()
	c := Check{Name: name, OK: err == nil, Detail: detail}
	if err != nil {
		c.Detail = err.Error()
		if !errors.Is(err, sentinel) {
			err = fmt.Errorf("%w: %w", sentinel, err)
		}
		c.err = err
	}
	v.r.Checks = append(v.r.Checks, c)
	return c.OK
}

func (v *verifier) identity() (string, error) {
	if len(v.p.MachineCAs) == 0 {
		return "", errors.New("the policy has no machine CA")
	}
	certs, err := trust.ParseCerts([]byte(v.q.Identity))
	if err != nil || len(certs) == 0 {
		return "", fmt.Errorf("identity certificate: %v", err)
	}
	leaf := certs[0]
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range v.p.MachineCAs {
		roots.AddCert(c)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: v.p.At,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", fmt.Errorf("%q: %w", leaf.Subject.CommonName, err)
	}
	for _, r := range v.p.Revoked {
		if r.Cmp(leaf.SerialNumber) == 0 {
			return "", fmt.Errorf("%q: serial %s is revoked", leaf.Subject.CommonName, trust.FormatSerial(leaf.SerialNumber))
		}
	}
	mid, err := trust.MachineID(leaf)
	if err != nil {
		return "", err
	}
	pid, err := trust.ProductID(leaf)
	if err != nil {
		return "", err
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return "", errors.New("identity key is not ECDSA")
	}
	v.idPub = pub
	v.r.MachineID, v.r.ProductID, v.r.Identity = mid, pid, leaf
	v.r.IdentitySerial = trust.FormatSerial(leaf.SerialNumber)
	return fmt.Sprintf("machine %s of product %s, issued by %q", mid, pid, leaf.Issuer.CommonName), nil
}

func (v *verifier) ak() (string, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](v.q.AKPublic)
	if err != nil {
		return "", fmt.Errorf("AK public area: %w", err)
	}
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.SignEncrypt || a.Decrypt {
		return "", errors.New("AK is not a TPM-generated, non-duplicable, restricted signing key")
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return "", fmt.Errorf("AK public key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return "", errors.New("AK is not an ECDSA key")
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return "", fmt.Errorf("AK name: %w", err)
	}
	if !ecdsa.VerifyASN1(v.idPub, sha256Of(v.q.AKCertification), v.q.AKSignature) {
		return "", errors.New("the certification is not signed by the identity key")
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](v.q.AKCertification)
	if err != nil {
		return "", fmt.Errorf("certification: %w", err)
	}
	if att.Type != tpm2.TPMSTAttestCertify {
		return "", fmt.Errorf("certification is of type %#x, not TPM2_Certify", uint16(att.Type))
	}
	ci, err := att.Attested.Certify()
	if err != nil {
		return "", fmt.Errorf("certification: %w", err)
	}
	if !bytes.Equal(ci.Name.Buffer, name.Buffer) {
		return "", fmt.Errorf("the identity key certified object %x, not this AK (%x)", ci.Name.Buffer, name.Buffer)
	}
	v.akPub = ek
	return "restricted ECDSA P-256 key certified by the identity key", nil
}

func (v *verifier) quote() (string, error) {
	if !ecdsa.VerifyASN1(v.akPub, sha256Of(v.q.Quote), v.q.QuoteSignature) {
		return "", errors.New("the quote is not signed by the certified AK")
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](v.q.Quote)
	if err != nil {
		return "", fmt.Errorf("quote: %w", err)
	}
	if att.Type != tpm2.TPMSTAttestQuote {
		return "", fmt.Errorf("attestation of type %#x is not a quote", uint16(att.Type))
	}
	qi, err := att.Attested.Quote()
	if err != nil {
		return "", fmt.Errorf("quote: %w", err)
	}
	if len(qi.PCRSelect.PCRSelections) != 1 || qi.PCRSelect.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return "", errors.New("quote does not select exactly the sha256 bank")
	}
	got := selected(qi.PCRSelect.PCRSelections[0].PCRSelect)
	if !slices.Equal(got, PCRs) {
		return "", fmt.Errorf("quote covers PCRs %v, want %v", got, PCRs)
	}
	h := sha256.New()
	v.pcrs = map[int][]byte{}
	v.r.PCRs = map[int]string{}
	for _, n := range PCRs {
		val, ok := v.q.PCRs[n]
		if !ok || len(val) != sha256.Size {
			return "", fmt.Errorf("no sha256 value for PCR %d", n)
		}
		h.Write(val)
		v.pcrs[n] = val
		v.r.PCRs[n] = hex.EncodeToString(val)
	}
	if !bytes.Equal(h.Sum(nil), qi.PCRDigest.Buffer) {
		return "", errors.New("the PCR values sent are not the ones the TPM quoted")
	}
	v.quoteNonce = att.ExtraData.Buffer
	return fmt.Sprintf("signed by the AK over PCRs %v", PCRs), nil
}

func (v *verifier) nonce(want []byte) (string, error) {
	if len(want) == 0 {
		return "", errors.New("the verifier gave no nonce")
	}
	if !bytes.Equal(v.quoteNonce, want) {
		return "", fmt.Errorf("quote nonce %x, want %x", v.quoteNonce, want)
	}
	return "fresh", nil
}

func (v *verifier) replay() (string, error) {
	fw, err := tcglog.Parse(v.q.FirmwareLog)
	if err != nil {
		return "", fmt.Errorf("firmware %w", err)
	}
	evs, err := measure.Parse([]byte(v.q.VesselLog))
	if err != nil {
		return "", fmt.Errorf("vessel log: %w", err)
	}
	for _, ev := range evs {
		if ev.PCR != 7 && ev.PCR != measure.PCR {
			return "", fmt.Errorf("vessel log: %s event in PCR %d (vessel extends only 7 and %d)", ev.Type, ev.PCR, measure.PCR)
		}
		if ev.PCR == 7 && ev.Type != measure.TypeLock {
			return "", fmt.Errorf("vessel log: %s event in PCR 7 (only the lock goes there)", ev.Type)
		}
	}
	for n := 0; n <= 7; n++ {
		want, _, err := fw.Replay(uint32(n), tcglog.AlgSHA256)
		if err != nil {
			return "", fmt.Errorf("firmware log: %w", err)
		}
		what := "the firmware log"
		if n == 7 {
			for _, ev := range evs {
				if ev.PCR == 7 {
					want = measure.ExtendSHA256(want, []byte(ev.Data))
					v.r.Locked = true
					what = "the firmware log and vessel's lock"
				}
			}
		}
		if !bytes.Equal(want, v.pcrs[n]) {
			return "", fmt.Errorf("PCR %d is %x, %s replays to %x", n, v.pcrs[n], what, want)
		}
	}
	want, _ := measure.Replay(evs, measure.PCR)
	if !bytes.Equal(want, v.pcrs[measure.PCR]) {
		return "", fmt.Errorf("PCR %d is %x, vessel's log replays to %x", measure.PCR, v.pcrs[measure.PCR], want)
	}
	v.fw, v.events = fw, evs
	return fmt.Sprintf("%d firmware events, %d vessel events", len(fw.Events), len(evs)), nil
}

// policy reads what the replayed logs say and compares it with the policy;
// every check is made.
func (v *verifier) policy() bool {
	sb, signers, signerErr := v.secureBoot()
	v.r.SecureBoot = sb
	v.step("secure-boot", ErrSecureBoot, func() (string, error) {
		switch {
		case sb:
			return "on", nil
		case v.p.AllowSecureBootOff:
			return "off (allowed by the policy)", nil
		}
		return "", errors.New("the firmware measured SecureBoot off (or did not measure it)")
	})
	for _, c := range signers {
		v.r.UKISigners = append(v.r.UKISigners, c.Subject.String())
	}
	v.step("uki-signer", ErrSigner, func() (string, error) {
		if signerErr != nil {
			return "", signerErr
		}
		if len(v.p.UKISigners) == 0 {
			return fmt.Sprintf("not checked (no signer in the policy); %s", signedBy(v.r.UKISigners)), nil
		}
		if len(signers) == 0 {
			return "", errors.New("the firmware log has no db authority event: no image was verified by a db key")
		}
		for _, c := range signers {
			if !slices.ContainsFunc(v.p.UKISigners, c.Equal) {
				return "", fmt.Errorf("verified by %q (serial %s), not an allowed db certificate", c.Subject.String(), trust.FormatSerial(c.SerialNumber))
			}
		}
		return signedBy(v.r.UKISigners), nil
	})
	m, merr := v.manifest()
	if merr == nil {
		v.r.Manifest = &Manifest{Digest: m.Digest, ProductID: m.ProductID, Version: m.Version}
	}
	v.step("product", ErrProduct, func() (string, error) {
		if v.p.ProductID != "" {
			want, err := trust.ParseUUID(v.p.ProductID)
			if err != nil {
				return "", fmt.Errorf("policy product ID: %w", err)
			}
			if v.r.ProductID != want {
				return "", fmt.Errorf("identity certificate is of product %s, want %s", v.r.ProductID, want)
			}
		}
		if merr == nil && !strings.EqualFold(m.ProductID, v.r.ProductID) {
			return "", fmt.Errorf("the machine (product %s) runs a manifest of product %s", v.r.ProductID, m.ProductID)
		}
		return v.r.ProductID, nil
	})
	v.step("manifest-ca", ErrManifestCA, func() (string, error) {
		if merr != nil {
			return "", merr
		}
		if len(v.p.ManifestCAs) == 0 {
			return "not checked (no manifest CA in the policy)", nil
		}
		if len(v.q.Manifest) == 0 {
			return "", errors.New("the quote carries no signed manifest to check")
		}
		vm, err := trust.Verify(v.q.Manifest, trust.Options{CAs: v.p.ManifestCAs, At: v.p.At})
		if err != nil {
			return "", err
		}
		if vm.Digest().String() != m.Digest {
			return "", fmt.Errorf("the signed manifest sent is %s, the measured one %s", vm.Digest(), m.Digest)
		}
		v.r.Manifest.Signer = vm.Signer().Subject.String()
		return fmt.Sprintf("%s signed by %q", m.Digest, v.r.Manifest.Signer), nil
	})
	v.step("allow-list", ErrNotAllowed, func() (string, error) {
		if merr != nil {
			return "", merr
		}
		if len(v.p.AllowManifests) == 0 {
			return "not checked (no allow list in the policy)", nil
		}
		for _, a := range v.p.AllowManifests {
			if normDigest(a) == m.Digest {
				return m.Digest + " allowed", nil
			}
		}
		return "", fmt.Errorf("%s (version %d) is not allowed", m.Digest, m.Version)
	})
	return true
}

// manifest returns the one manifest event of vessel's log.
func (v *verifier) manifest() (measure.Manifest, error) {
	var found []measure.Event
	for _, ev := range v.events {
		if ev.Type == measure.TypeManifest {
			found = append(found, ev)
		}
	}
	switch len(found) {
	case 0:
		return measure.Manifest{}, fmt.Errorf("%w: vessel's log has no manifest event in PCR %d", ErrNoManifest, measure.PCR)
	case 1:
		return measure.ParseManifest(found[0])
	}
	return measure.Manifest{}, fmt.Errorf("%w: vessel's log has %d manifest events, want one", ErrNoManifest, len(found))
}

// secureBoot reads PCR7's events: the SecureBoot variable and the db
// certificates of the authority events. It uses an event's data only if
// its logged digest is the hash of that data (the replay proved the
// digest, not the data).
func (v *verifier) secureBoot() (bool, []*x509.Certificate, error) {
	var on bool
	var certs []*x509.Certificate
	for i, e := range v.fw.Events {
		if e.PCR != 7 || (e.Type != pcr7.EvEFIVariableDriverConfig && e.Type != pcr7.EvEFIVariableAuthority) {
			continue
		}
		if !bytes.Equal(e.Digests[tcglog.AlgSHA256], sha256Of(e.Data)) {
			return false, nil, fmt.Errorf("firmware log event %d: its data is not what was measured", i)
		}
		ve, err := pcr7.ParseVariableData(e.Data)
		if err != nil {
			return false, nil, fmt.Errorf("firmware log event %d: %w", i, err)
		}
		switch {
		case e.Type == pcr7.EvEFIVariableDriverConfig && ve.Name == "SecureBoot":
			on = len(ve.Data) == 1 && ve.Data[0] == 1
		case e.Type == pcr7.EvEFIVariableAuthority:
			// EFI_SIGNATURE_DATA: owner GUID, then the certificate.
			if len(ve.Data) < 16 {
				return on, certs, fmt.Errorf("firmware log event %d: authority of %d bytes", i, len(ve.Data))
			}
			c, err := x509.ParseCertificate(ve.Data[16:])
			if err != nil {
				return on, certs, fmt.Errorf("firmware log event %d: authority certificate: %w", i, err)
			}
			certs = append(certs, c)
		}
	}
	return on, certs, nil
}

func signedBy(signers []string) string {
	if len(signers) == 0 {
		return "no db authority event in the firmware log"
	}
	return "verified by " + strings.Join(signers, ", ")
}

// selected lists the PCRs set in a selection bitmap.
func selected(bitmap []byte) []int {
	var out []int
	for i, b := range bitmap {
		for j := 0; j < 8; j++ {
			if b&(1<<j) != 0 {
				out = append(out, i*8+j)
			}
		}
	}
	return out
}

func normDigest(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if !strings.HasPrefix(s, "sha256:") {
		s = "sha256:" + s
	}
	return s
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
