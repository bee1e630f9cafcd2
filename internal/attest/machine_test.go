package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/opencontainers/go-digest"
	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/boot/tcglog"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// ovmfLog is a firmware event log captured from an OVMF Secure Boot boot
// (internal/vmtest TestPCR7Prediction) and its db certificate.
const (
	ovmfLog = "../boot/pcr7/testdata/ovmf/binary_bios_measurements"
	ovmfDB  = "../boot/pcr7/testdata/ovmf/db.crt"
)

// keys is an organisation's CAs and a product.
type keys struct {
	dir                  string
	machineCA, manifestC *x509.Certificate
	machineKey           crypto.Signer
	pid                  string
	productKey           crypto.Signer
	productCert          *x509.Certificate
}

func newKeys(t testing.TB, org string) *keys {
	t.Helper()
	k := &keys{dir: t.TempDir()}
	if _, err := trust.Init(k.dir, trust.InitOptions{Org: org}); err != nil {
		t.Fatal(err)
	}
	var err error
	if k.machineCA, k.machineKey, err = trust.LoadCA(filepath.Join(k.dir, trust.IdentityCACert), filepath.Join(k.dir, trust.IdentityCAKey)); err != nil {
		t.Fatal(err)
	}
	if k.manifestC, _, err = trust.LoadCA(filepath.Join(k.dir, trust.ManifestCACert), filepath.Join(k.dir, trust.ManifestCAKey)); err != nil {
		t.Fatal(err)
	}
	res, err := trust.Product(k.dir, trust.ProductOptions{Name: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	k.pid = res.ProductID
	if k.productKey, err = trust.LoadKey(res.Key); err != nil {
		t.Fatal(err)
	}
	certs, err := trust.LoadCerts(res.Cert)
	if err != nil {
		t.Fatal(err)
	}
	k.productCert = certs[0]
	return k
}

// manifest returns a signed manifest of version v and its digest.
func (k *keys) manifest(t testing.TB, v int64) ([]byte, string) {
	t.Helper()
	d := digest.FromString("hostfs")
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: k.pid, Version: v,
		Hostfs: &manifest.Image{Ref: "hostfs:1", MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 500}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := trust.Sign(b, k.productKey, []*x509.Certificate{k.productCert})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := trust.Verify(s, trust.Options{CAs: []*x509.Certificate{k.manifestC}})
	if err != nil {
		t.Fatal(err)
	}
	return s, vm.Digest().String()
}

// csr makes a certificate request signed by signer.
func csr(t testing.TB, signer crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{SignatureAlgorithm: x509.ECDSAWithSHA256}, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// identityCert issues a machine certificate for a CSR.
func (k *keys) identityCert(t testing.TB, csr *x509.CertificateRequest, pid, machineID string) []byte {
	t.Helper()
	c, err := trust.IssueMachineCert(k.machineCA, k.machineKey, csr, pid, machineID, 0)
	if err != nil {
		t.Fatal(err)
	}
	return trust.PEMCerts(c)
}

func (k *keys) policy() attest.Policy {
	return attest.Policy{MachineCAs: []*x509.Certificate{k.machineCA}, ManifestCAs: []*x509.Certificate{k.manifestC}, ProductID: k.pid}
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// machine is a booted, provisioned machine on a TPM: the firmware log was
// replayed into PCRs 0-7, the identity key made, the AK certified, the
// manifest measured into PCR 15, PCR7 locked.
type machine struct {
	tp       *tpm.TPM
	st       tpm.State
	id       *tpm.Identity
	idCert   []byte
	dir      string
	fwLog    string
	vLog     string
	signed   []byte
	digest   string
	polKey   *ecdsa.PrivateKey
	policy   *tpm.SignedPolicy
	ukiCert  *x509.Certificate
	keys     *keys
	machID   string
	measured measure.Manifest
	csr      *x509.CertificateRequest
}

// boot makes m from a fresh TPM tp.
func boot(t testing.TB, tp *tpm.TPM, k *keys) *machine {
	t.Helper()
	m := &machine{tp: tp, keys: k, dir: t.TempDir(), machID: "m-0001", fwLog: ovmfLog}
	m.st = tpm.State{Dir: filepath.Join(m.dir, "tpm")}
	m.vLog = filepath.Join(m.dir, "measurements.jsonl")
	b, err := os.ReadFile(ovmfLog)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tcglog.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	replayInto(t, tp, l)
	m.polKey = newECKey(t)
	if _, err := tp.Provision(m.st, &m.polKey.PublicKey, tpm.ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	pcr7, err := tp.PCR7()
	if err != nil {
		t.Fatal(err)
	}
	if m.policy, err = tpm.SignPolicy(m.polKey, pcr7, 1); err != nil {
		t.Fatal(err)
	}
	if m.id, err = tp.Identity(m.st, m.policy, nil); err != nil {
		t.Fatal(err)
	}
	m.csr = csr(t, m.id)
	m.idCert = k.identityCert(t, m.csr, k.pid, m.machID)
	// The initrd: verify, measure the manifest, certify the AK, lock.
	m.signed, m.digest = k.manifest(t, 7)
	m.measured = measure.Manifest{Digest: m.digest, ProductID: k.pid, Version: 7}
	log := measure.Log{Path: m.vLog}
	if err := log.Measure(tp, measure.ManifestEvent(m.measured)); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.AttestationKey(m.st, m.id); err != nil {
		t.Fatal(err)
	}
	if err := log.Measure(tp, measure.NewEvent(7, measure.TypeLock, tpm.LockEvent)); err != nil {
		t.Fatal(err)
	}
	db, err := trust.LoadCerts(ovmfDB)
	if err != nil {
		t.Fatal(err)
	}
	m.ukiCert = db[0]
	return m
}

// quote quotes with nonce after the lock: the identity key is not needed
// any more.
func (m *machine) quote(t testing.TB, nonce []byte) *attest.Quote {
	t.Helper()
	q, err := attest.Make(attest.MakeOptions{TPM: m.tp, State: m.st, IdentityCert: m.idCert, Nonce: nonce,
		FirmwareLog: m.fwLog, VesselLog: m.vLog, Manifest: m.signed})
	if err != nil {
		t.Fatal(err)
	}
	// through the file format
	b, err := q.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if q, err = attest.ParseQuote(b); err != nil {
		t.Fatal(err)
	}
	return q
}

// replayInto extends the TPM's sha256 PCRs with the log's events, as
// firmware would have.
func replayInto(t testing.TB, tp *tpm.TPM, l *tcglog.Log) {
	t.Helper()
	for _, e := range l.Events {
		if e.Type == tcglog.EvNoAction {
			continue
		}
		_, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.PCR), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: e.Digests[tcglog.AlgSHA256]}}},
		}).Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
	}
}

func nonce(t testing.TB) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
