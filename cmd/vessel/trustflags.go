package main

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/trust"
)

// trustFlags are the flags of every command that verifies a signed system
// manifest: manifest verify, install and up.
type trustFlags struct {
	ca, productID, crl, at string
}

func (t *trustFlags) add(f *pflag.FlagSet) {
	f.StringVar(&t.ca, "ca", "", "manifest-signing CA certificate(s) to trust (PEM); required")
	f.StringVar(&t.productID, "product-id", "", "require this product UUID")
	f.StringVar(&t.crl, "crl", "", "revocation list from the CA (PEM or DER)")
	f.StringVar(&t.at, "at", "", "verify at this time (RFC 3339) instead of now")
}

// options loads the CA, CRL and time into trust options; verb names the
// command in errors.
func (t *trustFlags) options(verb string) (trust.Options, error) {
	opts := trust.Options{ProductID: t.productID}
	if t.ca == "" {
		return opts, usageError{verb + ": --ca is required (the manifest-signing CA certificate)"}
	}
	cas, err := trust.LoadCerts(t.ca)
	if err != nil {
		return opts, fmt.Errorf("%s: %w", verb, err)
	}
	opts.CAs = cas
	if t.crl != "" {
		b, err := bounded.ReadFile(t.crl, trust.MaxCRLSize)
		if err != nil {
			return opts, fmt.Errorf("%s: %w", verb, err)
		}
		if opts.CRL, err = trust.ParseCRL(b); err != nil {
			return opts, fmt.Errorf("%s: CRL %s: %w", verb, t.crl, err)
		}
	}
	if t.at != "" {
		if opts.At, err = time.Parse(time.RFC3339, t.at); err != nil {
			return opts, usageError{verb + ": --at: want RFC 3339 time like 2030-01-01T00:00:00Z"}
		}
	}
	return opts, nil
}
