package main

import (
	"errors"
	"fmt"
	"math/big"
	"os"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/trust"
)

func init() { addCommand(keysCmd) }

func keysCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "keys",
		Short: "Create and manage the offline CAs, product keys and machine certificates",
		Long: `keys manages a key directory: the manifest-signing CA (its certificate is
baked into the initrd), the machine-identity CA, one signing key per product,
and the revocation list. Keep the directory offline; private keys are written
with mode 0600 and never printed. See docs/keys.md.`,
	}
	c.AddCommand(keysInitCmd(g), keysProductCmd(g), keysCSRCmd(g), keysMachineCmd(g), keysRevokeCmd(g), keysCRLCmd(g), keysUEFICmd(g))
	return c
}

func keysInitCmd(g *globals) *cobra.Command {
	var org, validFor string
	var force bool
	c := &cobra.Command{
		Use:   "init DIR --org NAME",
		Short: "Create the manifest-signing CA and the machine-identity CA",
		Example: `  vessel keys init ./keys --org "Acme Inc"
  openssl x509 -in ./keys/manifest-ca.pem -noout -text`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := trust.ParseValidity(validFor)
			if err != nil {
				return usageError{err.Error()}
			}
			res, err := trust.Init(args[0], trust.InitOptions{Org: org, ValidFor: d, Force: force})
			if errors.Is(err, trust.ErrExists) {
				return fmt.Errorf("%w (use --force to replace the CAs, which invalidates every certificate they signed)", err)
			}
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "manifest CA: %s (%s)\nidentity CA: %s (%s)\n",
				res.ManifestCA.Cert, res.ManifestCA.Subject, res.IdentityCA.Cert, res.IdentityCA.Subject)
			return err
		},
	}
	c.Flags().StringVar(&org, "org", "", "organisation name (required)")
	c.Flags().StringVar(&validFor, "valid-for", "20y", "CA validity (e.g. 20y, 365d, 36h)")
	c.Flags().BoolVar(&force, "force", false, "replace existing CAs (invalidates everything they signed)")
	return c
}

func keysProductCmd(g *globals) *cobra.Command {
	var name, id, validFor, key, csr string
	var force bool
	var tk tpmKeyFlags
	c := &cobra.Command{
		Use:   "product DIR --name NAME [--product-id UUID] [--key KEY|tpm:FILE]",
		Short: "Create a product signing key and certificate signed by the manifest CA",
		Long: `product writes DIR/products/NAME/product.pem, product.key (0600) and chain.pem
and prints the product ID. The certificate carries the product ID as the URI
SAN urn:uuid:<id>; every manifest it signs must name that product.

With --key, no key is generated: the certificate is issued for that key (a
PEM key, or tpm:FILE for a key held by a TPM, see 'vessel tpm key create')
and product.key is not written. With --csr, the key of a certificate request
made by 'vessel keys csr' (for example on the machine that holds the TPM) is
certified, after its signature is checked.`,
		Example: `  vessel keys product ./keys --name acme-router
  vessel keys product ./keys --name acme-router --key tpm:product.tpmkey --tpm /dev/tpmrm0
  vessel keys product ./keys --name acme-router --csr acme-router.csr      # from 'vessel keys csr'
  vessel keys product ./keys --name acme-router --product-id 0f8fad5b-d9cb-469f-a165-70867728950e --valid-for 2y
  openssl verify -CAfile ./keys/manifest-ca.pem ./keys/products/acme-router/product.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := trust.ParseValidity(validFor)
			if err != nil {
				return usageError{err.Error()}
			}
			res, err := trust.Product(args[0], trust.ProductOptions{Name: name, ProductID: id, ValidFor: d, Force: force,
				Key: key, TPM: tk.opener(cmd.InOrStdin()), CSR: csr})
			if errors.Is(err, trust.ErrExists) {
				return fmt.Errorf("%w (use --force to replace it)", err)
			}
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "product %s: certificate %s (serial %s, valid until %s)\n", res.Name, res.Cert, res.Serial, res.NotAfter)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), res.ProductID)
			return err
		},
	}
	c.Flags().StringVar(&name, "name", "", "product name (required)")
	c.Flags().StringVar(&id, "product-id", "", "product UUID (default: a new random UUID)")
	c.Flags().StringVar(&validFor, "valid-for", "2y", "certificate validity (e.g. 2y, 90d)")
	c.Flags().BoolVar(&force, "force", false, "replace an existing product key")
	c.Flags().StringVar(&key, "key", "", "certify this existing key instead of generating one: a PEM file or tpm:FILE")
	c.Flags().StringVar(&csr, "csr", "", "certify the key of this certificate request (from 'vessel keys csr') instead of generating one")
	tk.add(c)
	return c
}

func keysCSRCmd(g *globals) *cobra.Command {
	var name, key, out string
	var tk tpmKeyFlags
	c := &cobra.Command{
		Use:   "csr --key KEY|tpm:FILE --name NAME -o FILE",
		Short: "Write a certificate request for an existing product key (PEM or held by a TPM)",
		Long: `csr writes a PEM certificate request (subject CN=NAME) for a signing key,
signed by that key, so an offline manifest CA can certify it with
'vessel keys product DIR --name NAME --csr FILE' without the key leaving its
machine or TPM.`,
		Example: `  vessel tpm key create -o product.tpmkey
  vessel keys csr --key tpm:product.tpmkey --name acme-router -o acme-router.csr
  openssl req -in acme-router.csr -verify -noout
  vessel keys product ./keys --name acme-router --csr acme-router.csr   # on the CA host`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if key == "" || name == "" || out == "" {
				return usageError{"keys csr: --key, --name and -o are required"}
			}
			if err := trust.CSRFile(key, tk.opener(cmd.InOrStdin()), name, out); err != nil {
				return fmt.Errorf("keys csr: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"csr": out, "name": name, "key": key})
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s: certificate request for %s (key %s)\n", out, name, key)
			return err
		},
	}
	c.Flags().StringVar(&key, "key", "", "the key: a PEM file or tpm:FILE")
	c.Flags().StringVar(&name, "name", "", "product name (the request's common name)")
	c.Flags().StringVarP(&out, "output", "o", "", "where to write the request (PEM)")
	tk.add(c)
	return c
}

func keysMachineCmd(g *globals) *cobra.Command {
	var csrPath, pid, mid, out, validFor string
	c := &cobra.Command{
		Use:   "machine DIR --csr FILE --product-id UUID --machine-id ID -o CERT",
		Short: "Issue a machine identity certificate from a machine's CSR",
		Long: `machine signs a machine's certificate request with the machine-identity CA in
DIR. The certificate carries urn:uuid:<product-id> and
urn:vessel:machine:<machine-id> and is valid for TLS client and server auth.`,
		Example: `  vessel keys machine ./keys --csr machine.csr --product-id 0f8fad5b-d9cb-469f-a165-70867728950e --machine-id m-0001 -o machine.pem
  openssl verify -CAfile ./keys/identity-ca.pem machine.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := trust.ParseValidity(validFor)
			if err != nil {
				return usageError{err.Error()}
			}
			if csrPath == "" || out == "" {
				return usageError{"keys machine: --csr and -o are required"}
			}
			cert, err := trust.IssueMachineFile(trust.MachineRequest{KeysDir: args[0], CSR: csrPath, ProductID: pid, MachineID: mid, ValidFor: d, Output: out})
			if err != nil {
				return fmt.Errorf("keys machine: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"cert": out, "serial": trust.FormatSerial(cert.SerialNumber), "machineId": mid})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s (serial %s)\n", out, trust.FormatSerial(cert.SerialNumber))
			return err
		},
	}
	c.Flags().StringVar(&csrPath, "csr", "", "machine certificate request (PEM or DER)")
	c.Flags().StringVar(&pid, "product-id", "", "product UUID")
	c.Flags().StringVar(&mid, "machine-id", "", "machine ID")
	c.Flags().StringVarP(&out, "output", "o", "", "where to write the certificate (PEM)")
	c.Flags().StringVar(&validFor, "valid-for", "10y", "certificate validity")
	return c
}

func keysRevokeCmd(g *globals) *cobra.Command {
	var serial, certPath string
	c := &cobra.Command{
		Use:   "revoke DIR --serial N",
		Short: "Revoke a certificate issued by the manifest CA (then run 'keys crl')",
		Example: `  vessel keys revoke ./keys --serial 0x5c1e...     # as printed by 'keys product'
  vessel keys revoke ./keys --cert ./keys/products/old/product.pem
  vessel keys crl ./keys -o crl.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (serial == "") == (certPath == "") {
				return usageError{"keys revoke: give exactly one of --serial or --cert"}
			}
			var n *big.Int
			if certPath != "" {
				certs, err := trust.LoadCerts(certPath)
				if err != nil {
					return fmt.Errorf("keys revoke: %w", err)
				}
				n = certs[0].SerialNumber
			} else {
				var err error
				if n, err = trust.ParseSerial(serial); err != nil {
					return usageError{"keys revoke: " + err.Error()}
				}
			}
			if err := trust.Revoke(args[0], n); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"revoked": trust.FormatSerial(n)})
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "revoked %s; run 'vessel keys crl %s -o crl.pem' to publish it\n", trust.FormatSerial(n), args[0])
			return err
		},
	}
	c.Flags().StringVar(&serial, "serial", "", "serial number (decimal or 0x-hex)")
	c.Flags().StringVar(&certPath, "cert", "", "revoke the serial of this certificate")
	return c
}

func keysCRLCmd(g *globals) *cobra.Command {
	var out, validFor string
	c := &cobra.Command{
		Use:   "crl DIR -o CRL.pem",
		Short: "Issue a revocation list signed by the manifest CA",
		Example: `  vessel keys crl ./keys -o crl.pem
  openssl crl -in crl.pem -CAfile ./keys/manifest-ca.pem -noout -text
  vessel manifest verify manifest.signed --ca ./keys/manifest-ca.pem --crl crl.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := trust.ParseValidity(validFor)
			if err != nil {
				return usageError{err.Error()}
			}
			b, err := trust.CRL(args[0], d)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return fmt.Errorf("keys crl: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"crl": out})
			}
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "where to write the CRL (PEM; default stdout)")
	c.Flags().StringVar(&validFor, "valid-for", "365d", "CRL validity (next update)")
	return c
}
