package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// keyAuthEnv holds a TPM key's password when no --key-auth-file is given.
const keyAuthEnv = "VESSEL_TPM_KEY_AUTH"

// readKeyAuth reads a TPM key's password from file ("-": stdin) or, when
// file is empty, from $VESSEL_TPM_KEY_AUTH; never from the command line.
// One trailing newline is dropped.
func readKeyAuth(file string, stdin io.Reader) ([]byte, error) {
	var b []byte
	var err error
	switch file {
	case "":
		v, ok := os.LookupEnv(keyAuthEnv)
		if !ok {
			return nil, fmt.Errorf("the key's password: give --key-auth-file FILE (or -) or set $%s", keyAuthEnv)
		}
		b = []byte(v)
	case "-":
		b, err = bounded.ReadAll(stdin, 4096, "key password")
	default:
		b, err = bounded.ReadFile(file, 4096)
	}
	if err != nil {
		return nil, fmt.Errorf("read the key's password: %w", err)
	}
	b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
	if len(b) == 0 {
		return nil, errors.New("the key's password is empty")
	}
	return b, nil
}

// tpmKeyFlags let a command take --key tpm:FILE: which TPM, and where the
// key's password comes from.
type tpmKeyFlags struct{ dev, authFile string }

func (f *tpmKeyFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.dev, "tpm", envOr("VESSEL_TPM", tpm.DefaultDevice), "TPM holding tpm:FILE keys: /dev/tpmrm0, /dev/tpm0, swtpm:HOST:PORT or a unix socket ($VESSEL_TPM)")
	c.Flags().StringVar(&f.authFile, "key-auth-file", "", "file holding the TPM key's password, - for stdin (default $"+keyAuthEnv+")")
}

func (f *tpmKeyFlags) opener(stdin io.Reader) trust.KeyOpener {
	return tpm.KeyOpener{Device: f.dev, Auth: func() ([]byte, error) { return readKeyAuth(f.authFile, stdin) }}
}

func tpmKeyCmd(g *globals, f *tpmFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "Signing keys held by the TPM (TSS2 key files)",
		Long: `key creates signing keys inside the TPM, or wraps existing PEM keys to it, and
stores them as TSS2 "TSS2 PRIVATE KEY" PEM files: the private part is
encrypted by the TPM's storage root key (0x81000001, made by
'vessel tpm provision') and is useless on any other TPM. Give such a file as
--key tpm:FILE wherever a PEM key is accepted ('vessel manifest sign',
'vessel keys product'). The openssl tpm2 provider reads the same files.

A key password comes from --key-auth-file FILE (- for stdin) or
$VESSEL_TPM_KEY_AUTH, never from the command line. See docs/tpm.md.`,
	}
	c.AddCommand(tpmKeyCreateCmd(g, f), tpmKeyImportCmd(g, f))
	return c
}

type keyCreateFlags struct {
	out, authFile string
	auth, force   bool
}

func (k *keyCreateFlags) add(c *cobra.Command) {
	c.Flags().StringVarP(&k.out, "output", "o", "", "key file to write (mode 0600)")
	c.Flags().BoolVar(&k.auth, "auth", false, "protect the key with a password (from --key-auth-file or $"+keyAuthEnv+")")
	c.Flags().StringVar(&k.authFile, "key-auth-file", "", "file holding the password, - for stdin (default $"+keyAuthEnv+")")
	c.Flags().BoolVar(&k.force, "force", false, "replace an existing key file")
}

func (k *keyCreateFlags) options(cmd *cobra.Command, rsa bool) (tpm.KeyOptions, error) {
	o := tpm.KeyOptions{RSA: rsa}
	if k.out == "" {
		return o, usageError{cmd.CommandPath() + ": -o FILE is required"}
	}
	if k.auth {
		a, err := readKeyAuth(k.authFile, cmd.InOrStdin())
		if err != nil {
			return o, err
		}
		o.Auth = a
	} else if k.authFile != "" {
		return o, usageError{cmd.CommandPath() + ": --key-auth-file needs --auth"}
	}
	return o, nil
}

func printKeyFile(g *globals, cmd *cobra.Command, r *tpm.KeyFileResult) error {
	if g.json {
		return printJSON(cmd.OutOrStdout(), r)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: %s key under the SRK %s (password: %v); use it as --key tpm:%s\n", r.File, r.Type, r.Parent, r.Auth, r.File)
	_, err := fmt.Fprint(cmd.OutOrStdout(), r.PublicKey)
	return err
}

func tpmKeyCreateCmd(g *globals, f *tpmFlags) *cobra.Command {
	var k keyCreateFlags
	var ecc, rsa bool
	c := &cobra.Command{
		Use:   "create -o FILE [--ecc|--rsa] [--auth]",
		Short: "Generate a signing key inside the TPM and write its key file",
		Long: `create generates a signing key inside the TPM under the storage root key
(ECC P-256 by default, RSA 2048 with --rsa), bound to this TPM, and writes
its TSS2 key file. The public key (PEM) is printed on stdout.`,
		Example: `  vessel tpm key create -o product.tpmkey > product.pub
  vessel tpm key create -o product.tpmkey --rsa --auth --key-auth-file pw.txt
  vessel keys product ./keys --name acme --key tpm:product.tpmkey
  vessel manifest sign m.json --key tpm:product.tpmkey --cert keys/products/acme/product.pem -o m.signed`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ecc && rsa {
				return usageError{"tpm key create: --ecc and --rsa exclude each other"}
			}
			o, err := k.options(cmd, rsa)
			if err != nil {
				return err
			}
			var r *tpm.KeyFileResult
			if err := f.withTPM(func(t *tpm.TPM) (err error) { r, err = t.CreateKeyFile(k.out, o, k.force); return err }); err != nil {
				return fmt.Errorf("tpm key create: %w", err)
			}
			return printKeyFile(g, cmd, r)
		},
	}
	k.add(c)
	c.Flags().BoolVar(&ecc, "ecc", false, "ECC P-256 key (the default)")
	c.Flags().BoolVar(&rsa, "rsa", false, "RSA 2048 key")
	return c
}

func tpmKeyImportCmd(g *globals, f *tpmFlags) *cobra.Command {
	var k keyCreateFlags
	c := &cobra.Command{
		Use:   "import KEY.pem -o FILE [--auth]",
		Short: "Wrap an existing PEM private key to the TPM and write its key file",
		Long: `import wraps an existing ECDSA (P-256, P-384) or RSA 2048 private key to the
TPM's storage root key (TPM2_Import; the key crosses the bus encrypted) and
writes its TSS2 key file. The PEM key is left alone: once the key file
works, delete the PEM key (and its copies) so the TPM is its only holder.
The public key (PEM) is printed on stdout.`,
		Example: `  vessel tpm key import keys/products/acme/product.key -o product.tpmkey
  vessel manifest sign m.json --key tpm:product.tpmkey --cert keys/products/acme/product.pem -o m.signed
  shred -u keys/products/acme/product.key`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := k.options(cmd, false)
			if err != nil {
				return err
			}
			var r *tpm.KeyFileResult
			if err := f.withTPM(func(t *tpm.TPM) (err error) { r, err = t.ImportKeyFile(args[0], k.out, o, k.force); return err }); err != nil {
				return fmt.Errorf("tpm key import: %w", err)
			}
			return printKeyFile(g, cmd, r)
		},
	}
	k.add(c)
	return c
}
