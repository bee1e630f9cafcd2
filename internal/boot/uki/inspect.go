package uki

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"strings"

	uefiauth "github.com/foxboron/go-uefi/authenticode"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"

	bpe "github.com/vesselos/vessel/internal/boot/pe"
)

// Report is what Inspect finds in a UKI.
type Report struct {
	Size      int               `json:"size"`
	SHA256    string            `json:"sha256"`
	Sections  []bpe.Section     `json:"sections"`
	Cmdline   string            `json:"cmdline"`
	OSRelease map[string]string `json:"osRelease,omitempty"`
	Uname     string            `json:"uname,omitempty"`
	SBAT      string            `json:"sbat,omitempty"`
	// Digest is the image's Authenticode SHA-256 digest, computed from its bytes.
	Digest      string   `json:"authenticodeSHA256"`
	ChecksumOK  bool     `json:"checksumOK"`
	Signatures  []Signer `json:"signatures"`
	Initrd      *Initrd  `json:"initrd,omitempty"`
	KernelBytes int      `json:"kernelSize"`
}

// Signer is one Authenticode signature.
type Signer struct {
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	Serial  string `json:"serial"`
	// CertSHA256 is the SHA-256 of the signer certificate (DER).
	CertSHA256 string `json:"certSHA256"`
	// DigestMatches: the digest the signature covers is the image's digest.
	DigestMatches bool `json:"digestMatches"`
	// SignatureValid: the signer's certificate verifies the signature over
	// that digest (not whether the certificate is trusted: that is db's job).
	SignatureValid bool   `json:"signatureValid"`
	Error          string `json:"error,omitempty"`
	cert           *x509.Certificate
}

// Cert returns the signer certificate.
func (s Signer) Cert() *x509.Certificate { return s.cert }

// Initrd summarises the .initrd section.
type Initrd struct {
	Size int `json:"size"`
	// Compressed names the compression of the archive's members in order
	// (gzip and zstd are unpacked and read).
	Compressed []string `json:"compressed,omitempty"`
	// Undecoded names a compression Inspect cannot unpack (xz, lz4, ...):
	// files inside it are not listed.
	Undecoded string `json:"undecoded,omitempty"`
	Files     int    `json:"files"`
	// ManifestCA is the subject of the certificate at InitrdManifestCAPath.
	ManifestCA       string `json:"manifestCA,omitempty"`
	ManifestCASHA256 string `json:"manifestCASHA256,omitempty"`
	ProductID        string `json:"productID,omitempty"`
	Error            string `json:"error,omitempty"`
}

// Valid reports whether the image has at least one signature and every
// signature covers the image's digest and verifies.
func (r *Report) Valid() bool {
	if len(r.Signatures) == 0 {
		return false
	}
	for _, s := range r.Signatures {
		if !s.DigestMatches || !s.SignatureValid {
			return false
		}
	}
	return true
}

// SignedBy reports whether a valid signature was made with cert's key (same
// certificate).
func (r *Report) SignedBy(cert *x509.Certificate) bool {
	for _, s := range r.Signatures {
		if s.DigestMatches && s.SignatureValid && s.cert != nil && s.cert.Equal(cert) {
			return true
		}
	}
	return false
}

// Inspect reads a UKI: sections, embedded metadata and signatures.
func Inspect(img []byte) (*Report, error) {
	f, err := bpe.Parse(img)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	r := &Report{Size: len(img), SHA256: fmt.Sprintf("%x", sha256.Sum256(img)), Sections: f.Sections,
		ChecksumOK: f.StoredChecksum() == bpe.Checksum(img, f.ChecksumOffset())}
	if f.Section(".linux") == nil {
		return nil, fmt.Errorf("inspect: no .linux section: not a unified kernel image")
	}
	content := func(name string) []byte {
		if s := f.Section(name); s != nil {
			return f.Content(s)
		}
		return nil
	}
	r.Cmdline = strings.TrimRight(string(content(".cmdline")), "\x00")
	r.Uname = strings.TrimRight(string(content(".uname")), "\x00")
	r.SBAT = strings.TrimRight(string(content(".sbat")), "\x00")
	r.KernelBytes = len(content(".linux"))
	if osrel := content(".osrel"); osrel != nil {
		r.OSRelease = parseOSRelease(string(osrel))
	}
	if initrd := content(".initrd"); initrd != nil {
		r.Initrd = inspectInitrd(initrd)
	}
	certs, err := certificateTable(f, img)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	digest, err := authenticodeDigest(img)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	r.Digest = fmt.Sprintf("%x", digest)
	for _, c := range certs {
		r.Signatures = append(r.Signatures, checkSignature(c, digest))
	}
	return r, nil
}

// certificateTable validates the attribute certificate table (it must be the
// last thing in the file, as Authenticode requires) and returns the PKCS#7
// blobs of its WIN_CERTIFICATE entries of type PKCS_SIGNED_DATA.
func certificateTable(f *bpe.File, img []byte) ([][]byte, error) {
	off, size := f.SecurityDirectory()
	if off == 0 && size == 0 {
		return nil, nil
	}
	var rawEnd uint32
	for _, s := range f.Sections {
		rawEnd = max(rawEnd, s.PointerToRawData+s.SizeOfRawData)
	}
	if uint64(off)+uint64(size) != uint64(len(img)) || off < rawEnd {
		return nil, fmt.Errorf("certificate table at %#x (%d bytes) is not at the end of the %d-byte file after the sections", off, size, len(img))
	}
	var out [][]byte
	t := img[off:]
	for len(t) >= 8 {
		n := binary.LittleEndian.Uint32(t)
		rev, typ := binary.LittleEndian.Uint16(t[4:]), binary.LittleEndian.Uint16(t[6:])
		if n < 8 || uint64(n) > uint64(len(t)) {
			return nil, fmt.Errorf("certificate table: entry length %d does not fit in %d bytes", n, len(t))
		}
		if rev != 0x0200 || typ != 0x0002 {
			return nil, fmt.Errorf("certificate table: entry revision %#x type %#x is not a PKCS#7 Authenticode signature", rev, typ)
		}
		out = append(out, t[8:n])
		t = t[min(uint64(len(t)), (uint64(n)+7)&^7):]
	}
	return out, nil
}

// authenticodeDigest is the image's Authenticode SHA-256 digest (go-uefi's
// computation; a panic on malformed input becomes an error).
func authenticodeDigest(img []byte) (digest []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("authenticode digest: malformed image: %v", r)
		}
	}()
	p, err := uefiauth.Parse(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("authenticode digest: %w", err)
	}
	return p.Hash(crypto.SHA256), nil
}

func checkSignature(der []byte, digest []byte) (s Signer) {
	defer func() {
		if r := recover(); r != nil {
			s.DigestMatches, s.SignatureValid, s.Error = false, false, fmt.Sprintf("malformed signature: %v", r)
		}
	}()
	a, err := uefiauth.ParseAuthenticode(der)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	s.DigestMatches = bytes.Equal(a.Digest, digest)
	for _, c := range a.Pkcs.Certs {
		if a.Pkcs.HasCertificate(c) {
			s.cert = c
		}
	}
	if s.cert == nil {
		s.Error = "the signer certificate is not embedded"
		return s
	}
	s.Subject, s.Issuer, s.Serial = s.cert.Subject.String(), s.cert.Issuer.String(), "0x"+s.cert.SerialNumber.Text(16)
	s.CertSHA256 = fmt.Sprintf("%x", sha256.Sum256(s.cert.Raw))
	if len(a.Pkcs.SignerInfo) != 1 {
		s.Error = fmt.Sprintf("%d signer infos, want 1", len(a.Pkcs.SignerInfo))
		return s
	}
	si := a.Pkcs.SignerInfo[0]
	// The signature covers the authenticated attributes; their message
	// digest must be that of the signed SpcIndirectDataContent.
	if si.AuthenticatedAttributes == nil {
		s.Error = "no authenticated attributes"
		return s
	}
	body := cryptobyte.String(a.Pkcs.ContentInfo)
	var inner cryptobyte.String
	if !body.ReadASN1(&inner, asn1.SEQUENCE) {
		s.Error = "malformed SpcIndirectDataContent"
		return s
	}
	md := sha256.Sum256(inner)
	if !bytes.Equal(si.AuthenticatedAttributes.MessageDigest, md[:]) {
		s.Error = "the message digest attribute does not match the signed content"
		return s
	}
	ok, err := a.Pkcs.Verify(s.cert)
	if err != nil {
		s.Error = err.Error()
	}
	s.SignatureValid = ok && err == nil
	return s
}

func parseOSRelease(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		m[k] = strings.Trim(v, "\"'")
	}
	return m
}

func inspectInitrd(b []byte) *Initrd {
	in := &Initrd{Size: len(b)}
	entries, comp, undecoded, err := readInitrd(b)
	in.Compressed, in.Undecoded = comp, undecoded
	in.Files = len(entries)
	if err != nil {
		in.Error = err.Error()
	}
	for _, e := range entries {
		switch e.Name {
		case InitrdManifestCAPath:
			blk, _ := pem.Decode(e.Data)
			if blk == nil {
				in.Error = InitrdManifestCAPath + ": no PEM block"
				continue
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				in.Error = InitrdManifestCAPath + ": " + err.Error()
				continue
			}
			in.ManifestCA = c.Subject.String()
			in.ManifestCASHA256 = fmt.Sprintf("%x", sha256.Sum256(c.Raw))
		case InitrdProductIDPath:
			in.ProductID = strings.TrimSpace(string(e.Data))
		}
	}
	return in
}
