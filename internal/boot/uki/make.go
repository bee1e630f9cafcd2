package uki

import (
	"crypto/sha256"
	"fmt"

	"github.com/vesselos/vessel/internal/atomicfile"
	bpe "github.com/vesselos/vessel/internal/boot/pe"
	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// MakeResult describes a written UKI.
type MakeResult struct {
	Path     string        `json:"path"`
	Size     int           `json:"size"`
	SHA256   string        `json:"sha256"`
	Uname    string        `json:"uname,omitempty"`
	Signer   string        `json:"signer"`
	Sections []bpe.Section `json:"sections"`
}

// Make reads the inputs, builds the UKI, signs it and writes it atomically.
func Make(o MakeOptions) (*MakeResult, error) {
	cert, key, err := secureboot.LoadKeyPair(o.Cert, o.Key)
	if err != nil {
		return nil, fmt.Errorf("load signing key: %w", err)
	}
	var opts Options
	if opts.Stub, err = readFile("stub", o.Stub); err != nil {
		return nil, err
	}
	if opts.Kernel, err = readFile("kernel", o.Kernel); err != nil {
		return nil, err
	}
	if opts.Initrd, err = readFile("initrd", o.Initrd); err != nil {
		return nil, err
	}
	if o.OSRelease != "" {
		if opts.OSRelease, err = readFile("os-release", o.OSRelease); err != nil {
			return nil, err
		}
	}
	if o.SBAT != "" {
		if opts.SBAT, err = readFile("sbat", o.SBAT); err != nil {
			return nil, err
		}
	}
	opts.Cmdline, opts.Uname = o.Cmdline, o.Uname
	img, err := Build(opts)
	if err != nil {
		return nil, err
	}
	signed, err := Sign(img, key, cert)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(o.Output, signed, 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", o.Output, err)
	}
	f, err := bpe.Parse(signed)
	if err != nil {
		return nil, err
	}
	uname := opts.Uname
	if s := f.Section(".uname"); s != nil {
		uname = string(f.Content(s))
	}
	return &MakeResult{Path: o.Output, Size: len(signed), SHA256: fmt.Sprintf("%x", sha256.Sum256(signed)),
		Uname: uname, Signer: cert.Subject.String(), Sections: f.Sections}, nil
}
