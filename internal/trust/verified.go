package trust

import (
	"bytes"
	"crypto/x509"
	"encoding/json"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/manifest"
)

// VerifiedManifest is a system manifest that passed Verify. Its fields are
// unexported and only Verify fills them in, so a function that takes a
// *VerifiedManifest cannot be handed an unverified manifest. The zero value
// is not verified: its methods panic.
//
// Accessors return copies; the manifest cannot be changed after
// verification.
type VerifiedManifest struct {
	m      manifest.Manifest
	raw    []byte
	digest digest.Digest
	signer *x509.Certificate
	chain  []*x509.Certificate
	images bool
}

func (v *VerifiedManifest) must() {
	if v == nil || v.raw == nil {
		panic("trust: VerifiedManifest not produced by trust.Verify")
	}
}

// Manifest returns a deep copy of the verified manifest.
func (v *VerifiedManifest) Manifest() *manifest.Manifest {
	v.must()
	m, err := manifest.Parse(v.raw)
	if err != nil {
		panic("trust: verified manifest no longer parses: " + err.Error())
	}
	return m
}

// Bytes returns a copy of the exact signed manifest bytes.
func (v *VerifiedManifest) Bytes() []byte { v.must(); return bytes.Clone(v.raw) }

// Digest is the sha256 digest of the manifest bytes.
func (v *VerifiedManifest) Digest() digest.Digest { v.must(); return v.digest }

// ProductID is the product UUID (certificate and manifest agree).
func (v *VerifiedManifest) ProductID() string { v.must(); return v.m.Product }

// Version is the manifest version.
func (v *VerifiedManifest) Version() int64 { v.must(); return v.m.Version }

// Images returns the images the manifest pins, hostfs first.
func (v *VerifiedManifest) Images() []manifest.Image { v.must(); return v.m.Images() }

// ImagesChecked reports whether Verify also checked the images against a
// store (Options.Images).
func (v *VerifiedManifest) ImagesChecked() bool { v.must(); return v.images }

// Signer returns the product certificate that signed the manifest.
func (v *VerifiedManifest) Signer() *x509.Certificate { v.must(); return v.signer }

// Summary is the JSON form of a verification result.
type Summary struct {
	Verified      bool     `json:"verified"`
	Product       string   `json:"product"`
	ProductName   string   `json:"productName,omitempty"`
	Version       int64    `json:"version"`
	Digest        string   `json:"digest"`
	Signer        string   `json:"signer"`
	SignerSerial  string   `json:"signerSerial"`
	Chain         []string `json:"chain"`
	Images        int      `json:"images"`
	ImagesChecked bool     `json:"imagesChecked"`
}

// Summary describes the verified manifest.
func (v *VerifiedManifest) Summary() Summary {
	v.must()
	s := Summary{Verified: true, Product: v.m.Product, ProductName: v.m.ProductName, Version: v.m.Version,
		Digest: v.digest.String(), Signer: v.signer.Subject.String(), SignerSerial: FormatSerial(v.signer.SerialNumber),
		Images: len(v.m.Images()), ImagesChecked: v.images}
	for _, c := range v.chain {
		s.Chain = append(s.Chain, c.Subject.String())
	}
	return s
}

// MarshalJSON encodes the Summary.
func (v *VerifiedManifest) MarshalJSON() ([]byte, error) { return json.Marshal(v.Summary()) }
