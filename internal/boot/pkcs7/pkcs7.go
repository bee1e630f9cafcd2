// Package pkcs7 writes the two PKCS#7 (RFC 2315) SignedData shapes that UEFI
// Secure Boot consumes, deterministically (no signing time, no random
// padding: RSA PKCS#1 v1.5 over SHA-256):
//
//   - Authenticode: the signed content is embedded (SpcIndirectDataContent)
//     and the signer info carries authenticated attributes (content type,
//     an empty SpcSpOpusInfo, message digest), as sbsign writes them.
//   - Authenticated variables (EFI_VARIABLE_AUTHENTICATION_2): detached
//     content, no attributes, the signer certificate embedded, as efitools'
//     sign-efi-sig-list writes them.
//
// Verification lives elsewhere: internal/boot/uki checks Authenticode with
// github.com/foxboron/go-uefi, and the tests check both shapes with
// sbverify, osslsigncode and openssl.
package pkcs7

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	encasn1 "encoding/asn1"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// Object identifiers used by the two shapes.
var (
	OIDData                   = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	OIDSignedData             = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	OIDSHA256                 = encasn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	OIDRSAEncryption          = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	OIDContentType            = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	OIDMessageDigest          = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	OIDSpcIndirectDataContent = encasn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	OIDSpcSpOpusInfo          = encasn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 12}
)

// ErrNotRSA is returned for a signing key that is not RSA: UEFI firmware
// verifies RSA (PKCS#1 v1.5, SHA-256) signatures only.
var ErrNotRSA = errors.New("UEFI Secure Boot needs an RSA key (PKCS#1 v1.5 with SHA-256)")

// checkSigner refuses a key that is not RSA or does not belong to cert.
func checkSigner(key crypto.Signer, cert *x509.Certificate) error {
	if _, ok := key.Public().(*rsa.PublicKey); !ok {
		return fmt.Errorf("%w: got %T", ErrNotRSA, key.Public())
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return fmt.Errorf("the private key does not belong to certificate %q", cert.Subject.String())
	}
	return nil
}

// SignAuthenticode returns a ContentInfo(SignedData) that embeds content (the
// body of an SpcIndirectDataContent SEQUENCE, without its own tag and length)
// and signs it with authenticated attributes. The result is the
// bCertificate of a WIN_CERTIFICATE of type PKCS_SIGNED_DATA.
func SignAuthenticode(key crypto.Signer, cert *x509.Certificate, content []byte) ([]byte, error) {
	if err := checkSigner(key, cert); err != nil {
		return nil, err
	}
	md := sha256.Sum256(content)
	attrs := [][]byte{
		attribute(OIDContentType, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(OIDSpcIndirectDataContent) }),
		attribute(OIDSpcSpOpusInfo, func(b *cryptobyte.Builder) { b.AddASN1(asn1.SEQUENCE, func(*cryptobyte.Builder) {}) }),
		attribute(OIDMessageDigest, func(b *cryptobyte.Builder) { b.AddASN1OctetString(md[:]) }),
	}
	// DER orders a SET OF by the encodings of its elements; verifiers hash
	// the re-encoded (sorted) set.
	slices.SortFunc(attrs, bytes.Compare)
	var set cryptobyte.Builder
	set.AddASN1(asn1.SET, func(b *cryptobyte.Builder) {
		for _, a := range attrs {
			b.AddBytes(a)
		}
	})
	setDER, err := set.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode authenticated attributes: %w", err)
	}
	sig, err := signSHA256(key, setDER)
	if err != nil {
		return nil, err
	}
	return build(cert, OIDSpcIndirectDataContent, content, attrs, sig)
}

// SignDetached returns a bare SignedData (without the ContentInfo wrapper,
// as EFI_VARIABLE_AUTHENTICATION_2 carries it) over message, which is not
// embedded: content type id-data, no attributes, the signer certificate
// included.
func SignDetached(key crypto.Signer, cert *x509.Certificate, message []byte) ([]byte, error) {
	if err := checkSigner(key, cert); err != nil {
		return nil, err
	}
	sig, err := signSHA256(key, message)
	if err != nil {
		return nil, err
	}
	ci, err := build(cert, OIDData, nil, nil, sig)
	if err != nil {
		return nil, err
	}
	return UnwrapContentInfo(ci)
}

func signSHA256(key crypto.Signer, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	// rand is unused by RSA PKCS#1 v1.5 (deterministic); pass it for
	// signers such as hardware keys that want one.
	sig, err := key.Sign(rand.Reader, h[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return sig, nil
}

func attribute(oid encasn1.ObjectIdentifier, value func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		b.AddASN1(asn1.SET, func(b *cryptobyte.Builder) { value(b) })
	})
	return b.BytesOrPanic()
}

func sha256Alg(b *cryptobyte.Builder) {
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(OIDSHA256)
		b.AddASN1NULL()
	})
}

// build encodes ContentInfo{signedData, SignedData{...}}. content nil means
// detached; attrs nil means no authenticated attributes.
func build(cert *x509.Certificate, contentType encasn1.ObjectIdentifier, content []byte, attrs [][]byte, sig []byte) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(OIDSignedData)
		b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignedData
				b.AddASN1Int64(1)
				b.AddASN1(asn1.SET, sha256Alg)                         // digestAlgorithms
				b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) { // contentInfo
					b.AddASN1ObjectIdentifier(contentType)
					if content != nil {
						b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
							b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddBytes(content) })
						})
					}
				})
				b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
					b.AddBytes(cert.Raw) // certificates
				})
				b.AddASN1(asn1.SET, func(b *cryptobyte.Builder) { // signerInfos
					b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1Int64(1)
						b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddBytes(cert.RawIssuer)
							b.AddASN1BigInt(cert.SerialNumber)
						})
						sha256Alg(b)
						if attrs != nil {
							b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
								for _, a := range attrs {
									b.AddBytes(a)
								}
							})
						}
						b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(OIDRSAEncryption)
							b.AddASN1NULL()
						})
						b.AddASN1OctetString(sig)
					})
				})
			})
		})
	})
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode pkcs7 signed data: %w", err)
	}
	return out, nil
}

// UnwrapContentInfo returns the SignedData inside a ContentInfo.
func UnwrapContentInfo(ci []byte) ([]byte, error) {
	s := cryptobyte.String(ci)
	var seq, inner cryptobyte.String
	var oid encasn1.ObjectIdentifier
	if !s.ReadASN1(&seq, asn1.SEQUENCE) || !seq.ReadASN1ObjectIdentifier(&oid) ||
		!seq.ReadASN1(&inner, asn1.Tag(0).ContextSpecific().Constructed()) {
		return nil, errors.New("pkcs7: malformed ContentInfo")
	}
	if !oid.Equal(OIDSignedData) {
		return nil, fmt.Errorf("pkcs7: content type %v is not signedData", oid)
	}
	return []byte(inner), nil
}

// WrapSignedData puts a bare SignedData into a ContentInfo (the form
// openssl and most parsers expect).
func WrapSignedData(sd []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(OIDSignedData)
		b.AddASN1(asn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) { b.AddBytes(sd) })
	})
	return b.BytesOrPanic()
}
