package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/manifest"
)

// pki is a key directory made by Init and Product, loaded back.
type pki struct {
	dir   string
	ca    *x509.Certificate
	caKey crypto.Signer
	pid   string
	leaf  *x509.Certificate
	key   crypto.Signer
}

func newPKI(t testing.TB, org string) *pki {
	t.Helper()
	dir := t.TempDir()
	if _, err := Init(dir, InitOptions{Org: org}); err != nil {
		t.Fatal(err)
	}
	res, err := Product(dir, ProductOptions{Name: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, pid: res.ProductID}
	if p.ca, p.caKey, err = LoadCA(filepath.Join(dir, ManifestCACert), filepath.Join(dir, ManifestCAKey)); err != nil {
		t.Fatal(err)
	}
	certs, err := LoadCerts(res.Cert)
	if err != nil {
		t.Fatal(err)
	}
	p.leaf = certs[0]
	if p.key, err = LoadKey(res.Key); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue signs tmpl with parent (self-signed when parent is nil) and returns
// the certificate and its new key.
func issue(t testing.TB, parent *x509.Certificate, parentKey crypto.Signer, tmpl *x509.Certificate) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber, _ = newSerial()
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func productTmpl(name, pid string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{{Scheme: "urn", Opaque: "uuid:" + pid}},
	}
}

func caTmpl(name string, pathLen int) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
}

func fakeDigest(s string) digest.Digest {
	h := sha256.Sum256([]byte(s))
	return digest.NewDigestFromBytes(digest.SHA256, h[:])
}

// manifestBytes returns a valid manifest for pid with n services whose
// images are "img0".."img{n-1}".
func manifestBytes(t testing.TB, pid string, version int64, n int) []byte {
	t.Helper()
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pid, ProductName: "acme", Version: version,
		Hostfs: &manifest.Image{Ref: "hostfs:1", MediaType: ocispec.MediaTypeImageManifest, Digest: fakeDigest("hostfs"), Size: 500}}
	for i := 0; i < n; i++ {
		m.Services = append(m.Services, manifest.Service{
			Name:    fmt.Sprintf("svc-%d", i),
			Image:   manifest.Image{Ref: fmt.Sprintf("img%d:1", i), MediaType: ocispec.MediaTypeImageManifest, Digest: fakeDigest(fmt.Sprintf("img%d", i)), Size: 500},
			Command: []string{"/bin/svc", "--port", fmt.Sprint(8000 + i)}, Env: []string{"A=1", "B=2"},
			Restart: manifest.RestartAlways, Network: manifest.NetworkPrivate,
			Ports:        []manifest.Port{{Host: uint16(8000 + i), Container: 80, Protocol: "tcp"}},
			Capabilities: []string{"CAP_NET_BIND_SERVICE"},
			Volumes:      []manifest.Volume{{Name: "data", Path: "/var/lib/data"}},
		})
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signRaw signs payload without Sign's sanity checks (attackers do not use
// them).
func signRaw(t testing.TB, payload []byte, key crypto.Signer, certs ...*x509.Certificate) []byte {
	t.Helper()
	sig, err := signDigest(payload, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := (&Signed{Payload: payload, Signature: sig, Certificates: certs}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (p *pki) sign(t testing.TB, version int64) []byte {
	t.Helper()
	b, err := Sign(manifestBytes(t, p.pid, version, 2), p.key, []*x509.Certificate{p.leaf})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (p *pki) opts() Options { return Options{CAs: []*x509.Certificate{p.ca}} }

// memImages is an in-memory image store.
type memImages struct {
	manifests map[digest.Digest]ocispec.Manifest
	blobs     map[digest.Digest]bool
}

func (m *memImages) Resolve(ref string) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, fmt.Errorf("image %s: not found", ref)
}

func (m *memImages) Manifest(d digest.Digest) (ocispec.Manifest, error) {
	om, ok := m.manifests[d]
	if !ok {
		return om, fmt.Errorf("blob %s: not found", d)
	}
	return om, nil
}

func (m *memImages) HasBlob(d digest.Digest) bool { return m.blobs[d] }

// imagesFor returns a store holding every image of manifestBytes(n), each
// with one verity-annotated layer.
func imagesFor(n int) *memImages {
	m := &memImages{manifests: map[digest.Digest]ocispec.Manifest{}, blobs: map[digest.Digest]bool{}}
	add := func(name string) {
		ld := fakeDigest("layer-" + name)
		m.manifests[fakeDigest(name)] = ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Layers: []ocispec.Descriptor{{
			MediaType: "application/vnd.stacker.image.layer.squashfs+zstd", Digest: ld, Size: 4096,
			Annotations: map[string]string{layer.AnnotationVerityRoot: fakeDigest("root-" + name).Encoded()}}}}
		m.blobs[ld] = true
	}
	add("hostfs")
	for i := 0; i < n; i++ {
		add(fmt.Sprintf("img%d", i))
	}
	return m
}

// reenvelope decodes a signed file, lets f change it, and encodes it again
// without re-signing.
func reenvelope(t testing.TB, signed []byte, f func(e *envelope)) []byte {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(signed, &e); err != nil {
		t.Fatal(err)
	}
	f(&e)
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
