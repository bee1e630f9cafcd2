// Package attesttest makes attested machines for tests: a TPM with a
// replayed OVMF event log, vessel's provisioning, an identity certificate,
// a measured signed manifest, a certified attestation key and the lock.
package attesttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"runtime"
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

// OVMFLog is a firmware event log captured from an OVMF Secure Boot boot
// (internal/vmtest TestPCR7Prediction) and its db certificate.
const (
	OVMFLog = "internal/boot/pcr7/testdata/ovmf/binary_bios_measurements"
	OVMFDB  = "internal/boot/pcr7/testdata/ovmf/db.crt"
)

// Keys is an organisation's CAs and a product.
type Keys struct {
	Dir                   string
	MachineCA, ManifestCA *x509.Certificate
	MachineKey            crypto.Signer
	PID                   string
	ProductKey            crypto.Signer
	ProductCert           *x509.Certificate
}

// NewKeys makes the CAs of org (vessel keys init) and a product.
func NewKeys(t testing.TB, org string) *Keys {
	t.Helper()
	k := &Keys{Dir: t.TempDir()}
	if _, err := trust.Init(k.Dir, trust.InitOptions{Org: org}); err != nil {
		t.Fatal(err)
	}
	var err error
	if k.MachineCA, k.MachineKey, err = trust.LoadCA(filepath.Join(k.Dir, trust.IdentityCACert), filepath.Join(k.Dir, trust.IdentityCAKey)); err != nil {
		t.Fatal(err)
	}
	if k.ManifestCA, _, err = trust.LoadCA(filepath.Join(k.Dir, trust.ManifestCACert), filepath.Join(k.Dir, trust.ManifestCAKey)); err != nil {
		t.Fatal(err)
	}
	res, err := trust.Product(k.Dir, trust.ProductOptions{Name: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	k.PID = res.ProductID
	if k.ProductKey, err = trust.LoadKey(res.Key); err != nil {
		t.Fatal(err)
	}
	certs, err := trust.LoadCerts(res.Cert)
	if err != nil {
		t.Fatal(err)
	}
	k.ProductCert = certs[0]
	return k
}

// Manifest returns a signed manifest of version v and its digest.
func (k *Keys) Manifest(t testing.TB, v int64) ([]byte, string) {
	t.Helper()
	d := digest.FromString("hostfs")
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: k.PID, Version: v,
		Hostfs: &manifest.Image{Ref: "hostfs:1", MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 500}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := trust.Sign(b, k.ProductKey, []*x509.Certificate{k.ProductCert})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := trust.Verify(s, trust.Options{CAs: []*x509.Certificate{k.ManifestCA}})
	if err != nil {
		t.Fatal(err)
	}
	return s, vm.Digest().String()
}

// CSR makes a certificate request signed by signer.
func CSR(t testing.TB, signer crypto.Signer) *x509.CertificateRequest {
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

// IdentityCert issues a machine certificate for a CSR.
func (k *Keys) IdentityCert(t testing.TB, csr *x509.CertificateRequest, pid, machineID string) []byte {
	t.Helper()
	c, err := trust.IssueMachineCert(k.MachineCA, k.MachineKey, csr, pid, machineID, 0)
	if err != nil {
		t.Fatal(err)
	}
	return trust.PEMCerts(c)
}

// Policy trusts k's CAs and product.
func (k *Keys) Policy() attest.Policy {
	return attest.Policy{MachineCAs: []*x509.Certificate{k.MachineCA}, ManifestCAs: []*x509.Certificate{k.ManifestCA}, ProductID: k.PID}
}

// NewECKey makes a P-256 key.
func NewECKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Machine is a booted, provisioned machine on a TPM: the firmware log was
// replayed into PCRs 0-7, the identity key made, the AK certified, the
// manifest measured into PCR 15, PCR7 locked.
type Machine struct {
	TPM         *tpm.TPM
	State       tpm.State
	ID          *tpm.Identity
	IDCert      []byte
	Dir         string
	FirmwareLog string
	VesselLog   string
	Signed      []byte
	Digest      string
	PolKey      *ecdsa.PrivateKey
	Policy      *tpm.SignedPolicy
	UKICert     *x509.Certificate
	Keys        *Keys
	MachineID   string
	Measured    measure.Manifest
	CSR         *x509.CertificateRequest
}

// Boot makes a Machine from a fresh TPM tp; with lock, PCR7 is locked
// at the end (the identity key can sign no more).
func Boot(t testing.TB, tp *tpm.TPM, k *Keys, lock bool) *Machine {
	t.Helper()
	m := &Machine{TPM: tp, Keys: k, Dir: t.TempDir(), MachineID: "m-0001", FirmwareLog: repoPath(OVMFLog)}
	m.State = tpm.State{Dir: filepath.Join(m.Dir, "tpm")}
	m.VesselLog = filepath.Join(m.Dir, "measurements.jsonl")
	b, err := os.ReadFile(repoPath(OVMFLog))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tcglog.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	ReplayInto(t, tp, l)
	m.PolKey = NewECKey(t)
	if _, err := tp.Provision(m.State, &m.PolKey.PublicKey, tpm.ProvisionOptions{}); err != nil {
		t.Fatal(err)
	}
	pcr7, err := tp.PCR7()
	if err != nil {
		t.Fatal(err)
	}
	if m.Policy, err = tpm.SignPolicy(m.PolKey, pcr7, 1); err != nil {
		t.Fatal(err)
	}
	if m.ID, err = tp.Identity(m.State, m.Policy, nil); err != nil {
		t.Fatal(err)
	}
	m.CSR = CSR(t, m.ID)
	m.IDCert = k.IdentityCert(t, m.CSR, k.PID, m.MachineID)
	// The initrd: verify, measure the manifest, certify the AK, lock.
	m.Signed, m.Digest = k.Manifest(t, 7)
	m.Measured = measure.Manifest{Digest: m.Digest, ProductID: k.PID, Version: 7}
	log := measure.Log{Path: m.VesselLog}
	if err := log.Measure(tp, measure.ManifestEvent(m.Measured)); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.AttestationKey(m.State, m.ID); err != nil {
		t.Fatal(err)
	}
	if lock {
		if err := log.Measure(tp, measure.NewEvent(7, measure.TypeLock, tpm.LockEvent)); err != nil {
			t.Fatal(err)
		}
	}
	db, err := trust.LoadCerts(repoPath(OVMFDB))
	if err != nil {
		t.Fatal(err)
	}
	m.UKICert = db[0]
	return m
}

// Quote quotes with nonce after the lock: the identity key is not needed
// any more.
func (m *Machine) Quote(t testing.TB, nonce []byte) *attest.Quote {
	t.Helper()
	q, err := attest.Make(attest.MakeOptions{TPM: m.TPM, State: m.State, IdentityCert: m.IDCert, Nonce: nonce,
		FirmwareLog: m.FirmwareLog, VesselLog: m.VesselLog, Manifest: m.Signed})
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

// ReplayInto extends the TPM's sha256 PCRs with the log's events, as
// firmware would have.
func ReplayInto(t testing.TB, tp *tpm.TPM, l *tcglog.Log) {
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

// Nonce is 32 random bytes.
func Nonce(t testing.TB) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// repoPath makes a path relative to the module root absolute (tests run
// in their package's directory).
func repoPath(p string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", p)
}
