package pcr7

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vesselos/vessel/internal/boot/ovmf"
	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/trust"
)

// Options are the file inputs of Run (vessel tpm pcr7 predict).
type Options struct {
	Keys     string // key directory of 'vessel keys uefi' (certificates and owner.guid; private keys are not read)
	Vars     string // or an OVMF variable store
	DBX      string // dbx: SHA-256 hex lines or an EFI signature list (replaces the store's dbx with Vars)
	Signer   string // certificate that signed the booted image (default: the db certificate)
	EventLog string // TCG2 event log (binary_bios_measurements) to replay
}

// Report is what Run found. PCR7 is the prediction when keys or a store
// were given, else the log's replay.
type Report struct {
	PCR7       Hex         `json:"pcr7"`
	Source     string      `json:"source"` // keys, vars or eventlog
	Prediction *Result     `json:"prediction,omitempty"`
	Log        *LogResult  `json:"log,omitempty"`
	Match      *bool       `json:"match,omitempty"` // prediction vs log, when both
	Difference *Difference `json:"difference,omitempty"`
}

// LoadCerts reads the public half of a key directory: owner.guid and the
// PK, KEK and db certificates (no private keys needed to predict).
func LoadCerts(dir string) (*secureboot.KeySet, error) {
	b, err := os.ReadFile(filepath.Join(dir, secureboot.OwnerFile))
	if err != nil {
		return nil, fmt.Errorf("read Secure Boot keys from %s: %w", dir, err)
	}
	owner, err := secureboot.ParseGUID(string(b))
	if err != nil {
		return nil, fmt.Errorf("read Secure Boot keys: %s: %w", secureboot.OwnerFile, err)
	}
	ks := &secureboot.KeySet{Owner: owner}
	for _, r := range []struct {
		role string
		key  *secureboot.Key
	}{{secureboot.PK, &ks.PK}, {secureboot.KEK, &ks.KEK}, {secureboot.DB, &ks.DB}} {
		certs, err := trust.LoadCerts(filepath.Join(dir, r.role+".crt"))
		if err != nil {
			return nil, fmt.Errorf("read Secure Boot %s certificate: %w", r.role, err)
		}
		r.key.Cert = certs[0]
	}
	return ks, nil
}

// Run predicts PCR7 from o.Keys or o.Vars, replays o.EventLog, and
// compares them when both are given.
func Run(o Options) (*Report, error) {
	if o.Keys != "" && o.Vars != "" {
		return nil, errors.New("predict from a key directory or from a VARS file, not both")
	}
	predict := o.Keys != "" || o.Vars != ""
	if !predict && o.EventLog == "" {
		return nil, errors.New("nothing to read: give a key directory, a VARS file or an event log")
	}
	if !predict && (o.DBX != "" || o.Signer != "") {
		return nil, errors.New("a dbx or a signer certificate only changes a prediction from keys or a VARS file")
	}
	r := &Report{}
	if predict {
		in, src, err := inputs(o)
		if err != nil {
			return nil, err
		}
		r.Prediction, r.Source = Predict(in), src
		r.PCR7 = r.Prediction.PCR7
	}
	if o.EventLog != "" {
		b, err := os.ReadFile(o.EventLog)
		if err != nil {
			return nil, fmt.Errorf("read event log: %w", err)
		}
		if r.Log, err = ParseLog(b); err != nil {
			return nil, fmt.Errorf("%s: %w", o.EventLog, err)
		}
		if !predict {
			r.PCR7, r.Source = r.Log.PCR7, "eventlog"
		}
	}
	if r.Prediction != nil && r.Log != nil {
		r.Difference = Compare(r.Prediction.Events, r.Log.Events)
		m := r.Difference == nil
		r.Match = &m
	}
	return r, nil
}

func inputs(o Options) (Inputs, string, error) {
	var signer *x509.Certificate
	if o.Signer != "" {
		certs, err := trust.LoadCerts(o.Signer)
		if err != nil {
			return Inputs{}, "", fmt.Errorf("read the signer certificate: %w", err)
		}
		signer = certs[0]
	}
	if o.Keys != "" {
		ks, err := LoadCerts(o.Keys)
		if err != nil {
			return Inputs{}, "", err
		}
		var dbx []byte
		if o.DBX != "" {
			if dbx, err = readDBX(o.DBX, ks.Owner); err != nil {
				return Inputs{}, "", err
			}
		}
		in, err := KeySetInputs(ks, dbx, signer)
		return in, "keys", err
	}
	b, err := os.ReadFile(o.Vars)
	if err != nil {
		return Inputs{}, "", fmt.Errorf("read variable store: %w", err)
	}
	s, err := ovmf.Parse(b)
	if err != nil {
		return Inputs{}, "", fmt.Errorf("%s: %w", o.Vars, err)
	}
	in, err := StoreInputs(s, signer)
	if err != nil {
		return Inputs{}, "", fmt.Errorf("%s: %w", o.Vars, err)
	}
	if o.DBX != "" {
		var owner secureboot.GUID
		if len(in.Authority) >= 16 {
			owner = secureboot.GUID(in.Authority[:16])
		}
		if in.DBX, err = readDBX(o.DBX, owner); err != nil {
			return Inputs{}, "", err
		}
	}
	return in, "vars", nil
}

func readDBX(path string, owner secureboot.GUID) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read dbx: %w", err)
	}
	dbx, err := secureboot.ParseDBX(b, owner)
	if err != nil {
		return nil, fmt.Errorf("read dbx %s: %w", path, err)
	}
	return dbx, nil
}
