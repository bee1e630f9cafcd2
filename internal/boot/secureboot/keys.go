// Package secureboot makes and reads the UEFI Secure Boot key set that
// verifies a machine's kernel.efi: PK (platform key), KEK (key exchange key)
// and db (the signature database whose key signs UKIs), as RSA-2048 keys
// with self-signed X.509 certificates, their EFI signature lists (.esl) and
// signed authenticated-variable updates (.auth) for enrolling them on a real
// machine in setup mode.
//
// Each certificate is self-signed (as efitools' and sbctl's key sets are):
// the chain of authority is in the .auth signatures, not in the
// certificates: PK.auth and KEK.auth are signed by PK, db.auth by KEK.
// Firmware checks a UKI's Authenticode signer against the db list directly.
//
// The variables as data (Variables) are the input of OVMF variable stores
// (internal/boot/ovmf) and of an offline PCR7 prediction.
package secureboot

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/trust"
)

// The key roles, which are also the file name stems in a key directory and
// the UEFI variable names.
const (
	PK  = "PK"
	KEK = "KEK"
	DB  = "db"
)

// OwnerFile holds the signature owner GUID of the key set.
const OwnerFile = "owner.guid"

// ErrExists is returned when a key directory already holds keys and Force is not set.
var ErrExists = errors.New("already holds Secure Boot keys (they are replaced only when asked to)")

// Key is one role's certificate and private key.
type Key struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// KeySet is PK, KEK and db with the owner GUID their signature lists carry.
type KeySet struct {
	Owner       GUID
	PK, KEK, DB Key
}

// GenerateOptions configure Generate.
type GenerateOptions struct {
	Org      string        // organisation in the certificate subjects
	ValidFor time.Duration // certificate validity (firmware does not check it); 0: 20 years
	Force    bool          // replace existing keys
	Now      time.Time     // certificate start and .auth timestamp; zero: now
}

// Files lists what Generate wrote, by role.
type Files struct {
	Dir   string              `json:"dir"`
	Owner GUID                `json:"owner"`
	Keys  map[string]KeyFiles `json:"keys"`
	NoPK  string              `json:"noPKAuth"`
}

// KeyFiles are the files of one role.
type KeyFiles struct {
	Key     string `json:"key"`
	Cert    string `json:"cert"`
	ESL     string `json:"esl"`
	Auth    string `json:"auth"`
	Subject string `json:"subject"`
	SHA256  string `json:"certSHA256"`
}

func roleFiles(dir, role string) KeyFiles {
	p := filepath.Join(dir, role)
	return KeyFiles{Key: p + ".key", Cert: p + ".crt", ESL: p + ".esl", Auth: p + ".auth"}
}

// Generate creates a key set in dir: for each of PK, KEK and db a private
// key (.key, PKCS#8 PEM, 0600), a self-signed certificate (.crt, PEM), its
// signature list (.esl) and a signed update (.auth: PK and KEK signed by
// PK, db by KEK); noPK.auth (an empty PK signed by PK) returns a machine to
// setup mode; owner.guid is the owner GUID of the lists.
func Generate(dir string, opts GenerateOptions) (*Files, error) {
	if strings.TrimSpace(opts.Org) == "" {
		return nil, errors.New("generate Secure Boot keys: an organisation name is required")
	}
	if opts.ValidFor == 0 {
		opts.ValidFor = 20 * 365 * 24 * time.Hour
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	opts.Now = opts.Now.UTC().Truncate(time.Second)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("generate Secure Boot keys: %w", err)
	}
	if !opts.Force {
		for _, name := range []string{OwnerFile, "noPK.auth"} {
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				return nil, fmt.Errorf("generate Secure Boot keys: %s: %w", filepath.Join(dir, name), ErrExists)
			}
		}
		for _, role := range []string{PK, KEK, DB} {
			f := roleFiles(dir, role)
			for _, p := range []string{f.Key, f.Cert, f.ESL, f.Auth} {
				if _, err := os.Lstat(p); err == nil {
					return nil, fmt.Errorf("generate Secure Boot keys: %s: %w", p, ErrExists)
				}
			}
		}
	}
	owner, err := NewGUID()
	if err != nil {
		return nil, err
	}
	ks := &KeySet{Owner: owner}
	for _, r := range []struct {
		role string
		key  *Key
	}{{PK, &ks.PK}, {KEK, &ks.KEK}, {DB, &ks.DB}} {
		k, err := newKey(opts.Org+" Secure Boot "+r.role, opts.Org, opts.Now, opts.ValidFor)
		if err != nil {
			return nil, fmt.Errorf("generate Secure Boot %s: %w", r.role, err)
		}
		*r.key = *k
	}
	res := &Files{Dir: dir, Owner: owner, Keys: map[string]KeyFiles{}, NoPK: filepath.Join(dir, "noPK.auth")}
	vars, err := ks.Variables(nil)
	if err != nil {
		return nil, err
	}
	signers := map[string]Key{PK: ks.PK, KEK: ks.PK, DB: ks.KEK}
	for i, role := range []string{PK, KEK, DB} {
		k := ks.role(role)
		f := roleFiles(dir, role)
		f.Subject = k.Cert.Subject.String()
		f.SHA256 = fmt.Sprintf("%x", sha256Sum(k.Cert.Raw))
		der, err := x509.MarshalPKCS8PrivateKey(k.Signer)
		if err != nil {
			return nil, fmt.Errorf("generate Secure Boot %s: %w", role, err)
		}
		auth, err := SignedUpdate(vars[i], opts.Now, signers[role].Signer, signers[role].Cert)
		if err != nil {
			return nil, err
		}
		for _, w := range []struct {
			path string
			data []byte
			mode os.FileMode
		}{
			{f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600},
			{f.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.Cert.Raw}), 0o644},
			{f.ESL, vars[i].Data, 0o644},
			{f.Auth, auth, 0o644},
		} {
			if err := atomicfile.Write(w.path, w.data, w.mode); err != nil {
				return nil, fmt.Errorf("write %s: %w", w.path, err)
			}
		}
		res.Keys[role] = f
	}
	noPK, err := SignedUpdate(Variable{Name: PK, GUID: GlobalVariable, Attributes: AttrsSecureBootKey}, opts.Now, ks.PK.Signer, ks.PK.Cert)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(res.NoPK, noPK, 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", res.NoPK, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, OwnerFile), []byte(owner.String()+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write owner GUID: %w", err)
	}
	return res, nil
}

func (ks *KeySet) role(r string) Key {
	switch r {
	case PK:
		return ks.PK
	case KEK:
		return ks.KEK
	}
	return ks.DB
}

func newKey(cn, org string, now time.Time, validFor time.Duration) (*Key, error) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{org}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Key{Cert: cert, Signer: priv}, nil
}

// Load reads a key set written by Generate. Private keys are loaded too; a
// key that does not match its certificate is an error.
func Load(dir string) (*KeySet, error) {
	b, err := os.ReadFile(filepath.Join(dir, OwnerFile))
	if err != nil {
		return nil, fmt.Errorf("load Secure Boot keys from %s (create them first: vessel keys uefi): %w", dir, err)
	}
	owner, err := ParseGUID(string(b))
	if err != nil {
		return nil, fmt.Errorf("load Secure Boot keys: %s: %w", OwnerFile, err)
	}
	ks := &KeySet{Owner: owner}
	for _, r := range []struct {
		role string
		key  *Key
	}{{PK, &ks.PK}, {KEK, &ks.KEK}, {DB, &ks.DB}} {
		f := roleFiles(dir, r.role)
		cert, key, err := LoadKeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("load Secure Boot %s: %w", r.role, err)
		}
		*r.key = Key{Cert: cert, Signer: key}
	}
	return ks, nil
}

// LoadKeyPair reads a certificate (PEM or DER) and its RSA private key and
// checks that they belong together.
func LoadKeyPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certs, err := trust.LoadCerts(certPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := trust.LoadKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("key %s: UEFI Secure Boot needs an RSA key, got %T", keyPath, key.Public())
	}
	if !pub.Equal(certs[0].PublicKey) {
		return nil, nil, fmt.Errorf("key %s does not belong to certificate %s (%s)", keyPath, certPath, certs[0].Subject)
	}
	return certs[0], key, nil
}

// Variables returns PK, KEK, db and, if dbx is not nil, dbx, in that order,
// each holding one signature list (one certificate, owner ks.Owner); dbx is
// a signature database as ParseDBX returns it.
func (ks *KeySet) Variables(dbx []byte) ([]Variable, error) {
	var vars []Variable
	for _, r := range []struct {
		name string
		guid GUID
		key  Key
	}{{PK, GlobalVariable, ks.PK}, {KEK, GlobalVariable, ks.KEK}, {DB, ImageSecurityDatabase, ks.DB}} {
		esl, err := X509List(ks.Owner, r.key.Cert).Bytes()
		if err != nil {
			return nil, err
		}
		vars = append(vars, Variable{Name: r.name, GUID: r.guid, Attributes: AttrsSecureBootKey, Data: esl})
	}
	if dbx != nil {
		if _, err := ParseLists(dbx); err != nil {
			return nil, fmt.Errorf("dbx: %w", err)
		}
		vars = append(vars, Variable{Name: "dbx", GUID: ImageSecurityDatabase, Attributes: AttrsSecureBootKey, Data: dbx})
	}
	return vars, nil
}

// DBSignatureData is the EFI_SIGNATURE_DATA (owner GUID, then the db
// certificate DER) of the db entry that verifies images signed by db.key:
// firmware measures it into PCR7 as the EV_EFI_VARIABLE_AUTHORITY event
// data when it loads such an image.
func (ks *KeySet) DBSignatureData() []byte {
	return append(append([]byte(nil), ks.Owner[:]...), ks.DB.Cert.Raw...)
}
