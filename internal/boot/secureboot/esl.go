package secureboot

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Signature is one EFI_SIGNATURE_DATA: the owner GUID and the signature
// (a DER certificate or a digest, by the list's type).
type Signature struct {
	Owner GUID
	Data  []byte
}

// SignatureList is one EFI_SIGNATURE_LIST. All its signatures have the same
// size. A signature database (the data of PK, KEK, db, dbx, or an .esl file)
// is a concatenation of lists.
type SignatureList struct {
	Type       GUID
	Header     []byte
	Signatures []Signature
}

const signatureListHeaderSize = 16 + 4 + 4 + 4

// X509List is a list holding one certificate, as efitools'
// cert-to-efi-sig-list writes it.
func X509List(owner GUID, cert *x509.Certificate) SignatureList {
	return SignatureList{Type: CertX509, Signatures: []Signature{{Owner: owner, Data: bytes.Clone(cert.Raw)}}}
}

// SHA256List is a list of SHA-256 image digests (for dbx).
func SHA256List(owner GUID, digests [][sha256.Size]byte) SignatureList {
	l := SignatureList{Type: CertSHA256}
	for _, d := range digests {
		l.Signatures = append(l.Signatures, Signature{Owner: owner, Data: bytes.Clone(d[:])})
	}
	return l
}

// Bytes encodes the list. It fails if the signatures differ in size.
func (l SignatureList) Bytes() ([]byte, error) {
	if len(l.Signatures) == 0 {
		return nil, errors.New("encode signature list: no signatures")
	}
	size := 16 + len(l.Signatures[0].Data)
	var b bytes.Buffer
	b.Write(l.Type[:])
	total := signatureListHeaderSize + len(l.Header) + size*len(l.Signatures)
	binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(total), uint32(len(l.Header)), uint32(size)})
	b.Write(l.Header)
	for i, s := range l.Signatures {
		if 16+len(s.Data) != size {
			return nil, fmt.Errorf("encode signature list: signature %d has %d bytes, the first has %d", i, len(s.Data), size-16)
		}
		b.Write(s.Owner[:])
		b.Write(s.Data)
	}
	return b.Bytes(), nil
}

// MarshalLists encodes a signature database.
func MarshalLists(lists []SignatureList) ([]byte, error) {
	var out []byte
	for _, l := range lists {
		b, err := l.Bytes()
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// ParseLists decodes a signature database (zero or more lists).
func ParseLists(b []byte) ([]SignatureList, error) {
	var lists []SignatureList
	for off := 0; off < len(b); {
		if len(b)-off < signatureListHeaderSize {
			return nil, fmt.Errorf("parse signature list at offset %d: %d bytes left, a header needs %d", off, len(b)-off, signatureListHeaderSize)
		}
		var l SignatureList
		copy(l.Type[:], b[off:])
		total := int(binary.LittleEndian.Uint32(b[off+16:]))
		hdr := int(binary.LittleEndian.Uint32(b[off+20:]))
		size := int(binary.LittleEndian.Uint32(b[off+24:]))
		if total < signatureListHeaderSize || total > len(b)-off || hdr > total-signatureListHeaderSize || size < 16 ||
			(total-signatureListHeaderSize-hdr)%size != 0 {
			return nil, fmt.Errorf("parse signature list at offset %d: inconsistent sizes (list %d, header %d, signature %d, %d bytes left)",
				off, total, hdr, size, len(b)-off)
		}
		p := off + signatureListHeaderSize
		l.Header = bytes.Clone(b[p : p+hdr])
		for p += hdr; p < off+total; p += size {
			var s Signature
			copy(s.Owner[:], b[p:])
			s.Data = bytes.Clone(b[p+16 : p+size])
			l.Signatures = append(l.Signatures, s)
		}
		if l.Type == CertX509 {
			for i, s := range l.Signatures {
				if _, err := x509.ParseCertificate(s.Data); err != nil {
					return nil, fmt.Errorf("parse signature list at offset %d: certificate %d: %w", off, i, err)
				}
			}
		}
		lists = append(lists, l)
		off += total
	}
	return lists, nil
}

// ParseDBX reads a revocation list for dbx: either an EFI signature list
// (binary) or text with one SHA-256 hex digest per line (blank lines and
// lines starting with # are ignored). Text digests get owner.
func ParseDBX(b []byte, owner GUID) ([]byte, error) {
	if lists, err := ParseLists(b); err == nil && len(lists) > 0 {
		return bytes.Clone(b), nil
	}
	var digests [][sha256.Size]byte
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		raw, err := hex.DecodeString(line)
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("dbx line %d: %q is neither a SHA-256 hex digest (64 hex digits) nor part of an EFI signature list", i+1, truncate(line, 80))
		}
		digests = append(digests, [sha256.Size]byte(raw))
	}
	if len(digests) == 0 {
		return nil, errors.New("dbx: no digests (want SHA-256 hex digests one per line, or an EFI signature list)")
	}
	return SHA256List(owner, digests).Bytes()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func sha256Sum(b []byte) [sha256.Size]byte { return sha256.Sum256(b) }
