// Package attest proves to a remote verifier which signed product a machine
// is running: "machine M of product P booted a UKI verified by db key K and
// its initrd verified manifest D, version V".
//
// On the machine, Make produces a Quote: the machine's identity
// certificate, an attestation key (AK) created in the TPM and certified by
// the TPM-resident identity key (TPM2_Certify), a TPM2_Quote by the AK over
// the firmware PCRs 0-7 and vessel's PCR (measure.PCR) with the verifier's
// nonce, the firmware's event log and vessel's measurement log.
//
// The verifier calls Verify with the same nonce and a Policy; it checks the
// chain identity certificate -> machine CA, AK certification -> identity
// key, quote signature -> AK, nonce, PCR digest, and replays both logs
// against the quoted PCRs before it believes anything the logs say. The
// Report then names the machine, its product, its Secure Boot state, the db
// certificate that verified its UKI and the manifest its initrd measured,
// and whether each matches the policy. docs/attest.md has the threat model.
package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// Format is the Quote file's format tag.
const Format = "vessel-attest-quote/v1"

// FirmwareLogFile is where Linux exposes the firmware's TCG event log.
const FirmwareLogFile = "/sys/kernel/security/tpm0/binary_bios_measurements"

// PCRs are the PCRs a quote covers: the firmware's 0-7 and vessel's.
var PCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, measure.PCR}

// Nonce sizes: the TPM takes at most 64 bytes of qualifying data; fewer
// than 16 random bytes would not make a replay unlikely.
const (
	MinNonce = 16
	MaxNonce = 64
)

// Quote is what a machine sends to a verifier (the file of
// `vessel attest quote`).
type Quote struct {
	Format string `json:"format"`
	// Identity is the machine identity certificate (PEM), then any
	// intermediate CA certificates.
	Identity string `json:"identity"`
	// AKPublic is the AK's TPMT_PUBLIC; AKCertification the TPMS_ATTEST
	// of TPM2_Certify over it and AKSignature the identity key's DER
	// ECDSA signature over that.
	AKPublic        tpm.Hex `json:"akPublic"`
	AKCertification tpm.Hex `json:"akCertification"`
	AKSignature     tpm.Hex `json:"akSignature"`
	// Nonce is the nonce the machine was asked to quote (informational:
	// Verify compares the quote with the verifier's own nonce).
	Nonce tpm.Hex `json:"nonce"`
	// Quote is the TPMS_ATTEST of TPM2_Quote, QuoteSignature the AK's DER
	// ECDSA signature over it, PCRs the sha256 bank values it covers.
	Quote          tpm.Hex         `json:"quote"`
	QuoteSignature tpm.Hex         `json:"quoteSignature"`
	PCRs           map[int]tpm.Hex `json:"pcrs"`
	// FirmwareLog is the TCG crypto-agile event log; VesselLog vessel's
	// measurement log (measure.LogFile, JSON Lines).
	FirmwareLog []byte `json:"firmwareLog"`
	VesselLog   string `json:"vesselLog"`
	// Manifest is the signed system manifest the machine runs (optional):
	// with it the verifier also checks the manifest's signature chain.
	Manifest []byte `json:"manifest,omitempty"`
}

// MakeOptions say where the machine's evidence is.
type MakeOptions struct {
	TPM   *tpm.TPM
	State tpm.State
	// Identity certifies a new AK when the state has none; it may be nil
	// once the AK exists (docs/attest.md).
	Identity *tpm.Identity
	// IdentityCert is the PEM identity certificate (and chain).
	IdentityCert []byte
	Nonce        []byte
	// FirmwareLog and VesselLog are file paths; empty means
	// FirmwareLogFile and measure.LogFile. A missing vessel log is an
	// empty one; a missing firmware log is an error.
	FirmwareLog, VesselLog string
	// Manifest is the signed manifest (optional).
	Manifest []byte
}

// Make quotes the machine's PCRs with nonce and gathers the evidence.
func Make(o MakeOptions) (*Quote, error) {
	if len(o.Nonce) < MinNonce || len(o.Nonce) > MaxNonce {
		return nil, fmt.Errorf("attestation quote: nonce of %d bytes, want %d to %d", len(o.Nonce), MinNonce, MaxNonce)
	}
	if len(o.IdentityCert) == 0 {
		return nil, errors.New("attestation quote: no identity certificate")
	}
	certs, err := trust.ParseCerts(o.IdentityCert)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("attestation quote: identity certificate: %v", err)
	}
	if pub, err := tpm.IdentityPublic(o.State); err == nil && !pub.Equal(certs[0].PublicKey) {
		return nil, fmt.Errorf("attestation quote: the identity certificate %q is not for this TPM's identity key", certs[0].Subject.CommonName)
	}
	fw := o.FirmwareLog
	if fw == "" {
		fw = FirmwareLogFile
	}
	fwLog, err := os.ReadFile(fw)
	if err != nil {
		return nil, fmt.Errorf("attestation quote: read firmware event log: %w", err)
	}
	vl := o.VesselLog
	if vl == "" {
		vl = measure.LogFile
	}
	vLog, err := os.ReadFile(vl)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attestation quote: read vessel measurement log: %w", err)
	}
	if _, err := measure.Parse(vLog); err != nil {
		return nil, fmt.Errorf("attestation quote: vessel measurement log %s: %w", vl, err)
	}
	ak, err := o.TPM.AttestationKey(o.State, o.Identity)
	if err != nil {
		return nil, fmt.Errorf("attestation quote: %w", err)
	}
	q, err := o.TPM.Quote(o.State, ak, o.Nonce, PCRs)
	if err != nil {
		return nil, fmt.Errorf("attestation quote: %w", err)
	}
	return &Quote{
		Format: Format, Identity: string(o.IdentityCert),
		AKPublic: ak.Blob.Public, AKCertification: ak.Certification, AKSignature: ak.Signature,
		Nonce: o.Nonce, Quote: q.Attest, QuoteSignature: q.Signature, PCRs: q.PCRs,
		FirmwareLog: fwLog, VesselLog: string(vLog), Manifest: o.Manifest,
	}, nil
}

// Marshal encodes q as indented JSON.
func (q *Quote) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(q, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// maxQuote bounds a quote file (firmware logs are tens of KiB).
const maxQuote = 16 << 20

// ParseQuote decodes a quote file strictly (unknown fields are refused).
func ParseQuote(b []byte) (*Quote, error) {
	if len(b) > maxQuote {
		return nil, fmt.Errorf("quote: %d bytes, more than %d", len(b), maxQuote)
	}
	var q Quote
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	if q.Format != Format {
		return nil, fmt.Errorf("quote: format %q, want %q", q.Format, Format)
	}
	return &q, nil
}

// ReadRevoked reads a revocation file: one serial per line (0x-hex as
// vessel prints serials, or decimal); blank lines and # comments are
// ignored. A missing file revokes nothing.
func ReadRevoked(path string) ([]*big.Int, error) {
	if path == "" {
		return nil, nil
	}
	b, err := bounded.ReadFile(path, 16<<20)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revocation list: %w", err)
	}
	var out []*big.Int
	for i, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		n, err := trust.ParseSerial(line)
		if err != nil {
			return nil, fmt.Errorf("revocation list %s line %d: %w", path, i+1, err)
		}
		out = append(out, n)
	}
	return out, nil
}
