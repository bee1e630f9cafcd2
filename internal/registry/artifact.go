package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// How a signed system manifest travels through a registry:
//
//	artifact manifest (tagged): OCI image manifest, artifactType ArtifactType,
//	  config = the empty descriptor, layers = [the exact system manifest bytes]
//	signature manifest (referrer): artifactType SignatureArtifactType,
//	  subject = the artifact manifest, layers = [signature, certificate chain]
//
// The signature is discovered with the referrers API, or the
// sha256-<hex> tag on registries without it.
const (
	ArtifactType          = manifest.MediaType // application/vnd.vessel.system-manifest.v1+json
	SignatureArtifactType = "application/vnd.vessel.signature.v1"
	// SignatureMediaType is the raw signature over SHA-256 of the manifest
	// bytes (ECDSA ASN.1 or RSA PKCS#1 v1.5), as 'openssl dgst -verify' reads it.
	SignatureMediaType = "application/vnd.vessel.signature.v1+der"
	// ChainMediaType is the signer's certificate then intermediates, PEM.
	ChainMediaType = "application/pem-certificate-chain"

	annotationProduct = "io.vessel.product"
	annotationVersion = "io.vessel.version"
	annotationSigner  = "io.vessel.signer"
)

// maxReferrers bounds how many signatures are tried.
const maxReferrers = 16

var emptyJSON = []byte("{}")

func emptyDescriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: digest.FromBytes(emptyJSON), Size: int64(len(emptyJSON))}
}

// SignedPush is what PushSigned published.
type SignedPush struct {
	Ref         string             `json:"ref"`
	Manifest    ocispec.Descriptor `json:"manifest"`  // the artifact manifest (what the tag names)
	Signature   ocispec.Descriptor `json:"signature"` // the referrer holding signature and chain
	FallbackTag string             `json:"fallbackTag,omitempty"`
	Images      []*Result          `json:"images,omitempty"`
}

// PushSigned publishes a signed manifest file (as written by 'vessel
// manifest sign') at dst: the manifest as an OCI artifact and its signature
// and certificate chain as a referrer. With images set, every image the
// manifest pins is first pushed from that store to dst's repository by
// digest, so the repository holds the whole product. Nothing is verified
// here beyond parsing; installers verify.
func (c *Client) PushSigned(ctx context.Context, signed []byte, dst Reference, images *store.Store) (*SignedPush, error) {
	s, err := trust.ParseSigned(signed)
	if err != nil {
		return nil, fmt.Errorf("push signed manifest: %w", err)
	}
	m, err := manifest.Parse(s.Payload)
	if err != nil {
		return nil, fmt.Errorf("push signed manifest: %w", err)
	}
	out := &SignedPush{Ref: dst.String()}
	if images != nil {
		for _, img := range m.Images() {
			if !images.HasBlob(img.Digest) {
				return nil, fmt.Errorf("push signed manifest: image %s (%s) is %w: pull or build it first", img.Ref, img.Digest, ErrImageNotLocal)
			}
			res, err := c.Copy(ctx, Store(images, img.Digest.String()), Registry(dst.WithDigest(img.Digest)))
			if err != nil {
				return nil, err
			}
			out.Images = append(out.Images, res)
		}
	}
	payload, err := c.pushBytes(ctx, dst, ArtifactType, s.Payload)
	if err != nil {
		return nil, err
	}
	empty, err := c.pushBytes(ctx, dst, ocispec.MediaTypeEmptyJSON, emptyJSON)
	if err != nil {
		return nil, err
	}
	art := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType, Config: empty, Layers: []ocispec.Descriptor{payload},
		Annotations: map[string]string{annotationProduct: m.Product, annotationVersion: strconv.FormatInt(m.Version, 10)},
	}
	artBytes, err := json.Marshal(art)
	if err != nil {
		return nil, err
	}
	out.Manifest = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: digest.FromBytes(artBytes), Size: int64(len(artBytes))}
	if dst.Digest != "" && dst.Digest != out.Manifest.Digest {
		return nil, fmt.Errorf("push signed manifest: destination is pinned to %s, but the artifact is %s", dst.Digest, out.Manifest.Digest)
	}
	if _, err := c.putManifest(ctx, dst, ocispec.MediaTypeImageManifest, artBytes); err != nil {
		return nil, err
	}
	c.emit(Event{Kind: EventTagged, Digest: out.Manifest.Digest, MediaType: ArtifactType, Size: out.Manifest.Size, Ref: dst.String()})

	sig, err := c.pushBytes(ctx, dst, SignatureMediaType, s.Signature)
	if err != nil {
		return nil, err
	}
	chain, err := c.pushBytes(ctx, dst, ChainMediaType, trust.PEMCerts(s.Certificates...))
	if err != nil {
		return nil, err
	}
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: out.Manifest.Digest, Size: out.Manifest.Size}
	ann := map[string]string{annotationSigner: s.Certificates[0].Subject.CommonName}
	sm := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: SignatureArtifactType, Config: empty, Layers: []ocispec.Descriptor{sig, chain},
		Subject: &subject, Annotations: ann,
	}
	smBytes, err := json.Marshal(sm)
	if err != nil {
		return nil, err
	}
	out.Signature = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: SignatureArtifactType,
		Digest: digest.FromBytes(smBytes), Size: int64(len(smBytes)), Annotations: ann}
	processed, err := c.putManifest(ctx, dst.WithDigest(out.Signature.Digest), ocispec.MediaTypeImageManifest, smBytes)
	if err != nil {
		return nil, err
	}
	if !processed {
		if err := c.addFallbackReferrer(ctx, dst, out.Manifest.Digest, out.Signature); err != nil {
			return nil, fmt.Errorf("push signed manifest: record the signature under tag %s: %w", FallbackTag(out.Manifest.Digest), err)
		}
		out.FallbackTag = FallbackTag(out.Manifest.Digest)
	}
	c.emit(Event{Kind: EventManifest, Digest: out.Signature.Digest, MediaType: SignatureArtifactType, Size: out.Signature.Size})
	return out, nil
}

// pushBytes uploads a small blob unless the repository has it.
func (c *Client) pushBytes(ctx context.Context, ref Reference, mediaType string, b []byte) (ocispec.Descriptor, error) {
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	ok, err := c.blobExists(ctx, ref, d.Digest, []string{pushScope(ref.Repo)})
	if err != nil || ok {
		return d, err
	}
	_, err = c.pushBlob(ctx, ref, d, func(context.Context, int64) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, "", nil)
	return d, err
}

// fetchBytes reads a small blob fully and checks its size and digest.
func (c *Client) fetchBytes(ctx context.Context, ref Reference, d ocispec.Descriptor, max int64) ([]byte, error) {
	if d.Size > max || d.Size < 0 {
		return nil, fmt.Errorf("blob %s: %d bytes is more than the %d allowed", d.Digest, d.Size, max)
	}
	if err := checkDesc(d); err != nil {
		return nil, err
	}
	body, _, err := c.getBlob(ctx, ref, d, 0, false)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	b, err := bounded.ReadAll(body, max, "blob "+d.Digest.String())
	if err != nil {
		return nil, fmt.Errorf("pull blob %s: %w", d.Digest, err)
	}
	if int64(len(b)) != d.Size || digest.FromBytes(b) != d.Digest {
		return nil, fmt.Errorf("pull blob %s from %s: %w", d.Digest, ref.Name(), ErrCorrupt)
	}
	return b, nil
}

// Fetched is a signed system manifest as found in a registry: not verified.
type Fetched struct {
	Ref      Reference          // the repository, pinned to the artifact digest
	Artifact ocispec.Descriptor // the artifact manifest
	Payload  []byte             // the exact system manifest bytes
	// Signed holds one signed manifest file (trust.ParseSigned format) per
	// signature referrer, for trust.Verify; SignatureErrors the referrers
	// that could not even be assembled.
	Signed          [][]byte
	Signatures      []ocispec.Descriptor
	SignatureErrors []error
}

// FetchSigned fetches the system manifest artifact ref names and assembles
// each signature attached to it (referrers API or tag fallback) into a
// signed manifest file. It verifies digests and sizes, not signatures: pass
// each of Signed to trust.Verify.
func (c *Client) FetchSigned(ctx context.Context, ref Reference) (*Fetched, error) {
	desc, b, err := c.getManifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	at := m.ArtifactType
	if at == "" {
		at = m.Config.MediaType
	}
	if at != ArtifactType || len(m.Layers) != 1 || m.Layers[0].MediaType != ArtifactType {
		return nil, fmt.Errorf("%s is not a vessel system manifest (artifact type %q; publish one with 'vessel manifest push')", ref, at)
	}
	f := &Fetched{Ref: ref.WithDigest(desc.Digest), Artifact: desc}
	if f.Payload, err = c.fetchBytes(ctx, ref, m.Layers[0], manifest.MaxSize); err != nil {
		return nil, err
	}
	refs, err := c.Referrers(ctx, ref, desc.Digest, SignatureArtifactType)
	if err != nil {
		return nil, err
	}
	if len(refs) > maxReferrers {
		refs = refs[len(refs)-maxReferrers:] // the newest
	}
	for _, r := range refs {
		signed, err := c.assembleSigned(ctx, ref, desc.Digest, r, f.Payload)
		if errors.Is(err, errNotSignature) {
			continue
		}
		if err != nil {
			f.SignatureErrors = append(f.SignatureErrors, fmt.Errorf("signature %s: %w", r.Digest, err))
			continue
		}
		f.Signed = append(f.Signed, signed)
		f.Signatures = append(f.Signatures, r)
	}
	return f, nil
}

var errNotSignature = errors.New("not a vessel signature")

func (c *Client) assembleSigned(ctx context.Context, ref Reference, subject digest.Digest, r ocispec.Descriptor, payload []byte) ([]byte, error) {
	if err := checkDesc(r); err != nil {
		return nil, err
	}
	_, b, err := c.getManifest(ctx, ref.WithDigest(r.Digest))
	if err != nil {
		return nil, err
	}
	var sm ocispec.Manifest
	if err := json.Unmarshal(b, &sm); err != nil {
		return nil, err
	}
	if sm.ArtifactType != SignatureArtifactType {
		return nil, errNotSignature
	}
	if sm.Subject == nil || sm.Subject.Digest != subject {
		return nil, errors.New("its subject is not this manifest")
	}
	var sig, chain []byte
	for _, l := range sm.Layers {
		switch l.MediaType {
		case SignatureMediaType:
			sig, err = c.fetchBytes(ctx, ref, l, 4096)
		case ChainMediaType:
			chain, err = c.fetchBytes(ctx, ref, l, int64(trust.MaxCertificates)*64<<10)
		}
		if err != nil {
			return nil, err
		}
	}
	if sig == nil || chain == nil {
		return nil, errors.New("no signature or no certificate chain in it")
	}
	certs, err := trust.ParseCerts(chain)
	if err != nil {
		return nil, fmt.Errorf("certificate chain: %w", err)
	}
	return (&trust.Signed{Payload: payload, Signature: sig, Certificates: certs}).Marshal()
}
