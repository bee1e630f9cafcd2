package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/trust"
)

func keysUEFICmd(g *globals) *cobra.Command {
	var org, validFor string
	var force bool
	c := &cobra.Command{
		Use:   "uefi DIR --org NAME",
		Short: "Create UEFI Secure Boot keys (PK, KEK, db) with signature lists and signed .auth updates",
		Long: `uefi writes a Secure Boot key set to DIR: for each of PK, KEK and db an
RSA-2048 private key (NAME.key, 0600), a self-signed certificate (NAME.crt),
its EFI signature list (NAME.esl) and a signed authenticated-variable update
(NAME.auth: PK and KEK signed by PK, db signed by KEK), plus noPK.auth (clears
PK: back to setup mode) and owner.guid (the signature owner of the lists).

db.key signs kernel.efi ('vessel boot uki'); 'vessel boot vars' puts the set
into an OVMF variable store for VMs. On a real machine in setup mode, enroll
db, then KEK, then PK (efi-updatevar -f db.auth db, or write the 4-byte
attributes 0x27 followed by the .auth file to efivarfs). See docs/boot.md.`,
		Example: `  vessel keys uefi ./sb --org "Acme Inc"
  sbverify --cert ./sb/db.crt kernel.efi
  efi-updatevar -f ./sb/db.auth db && efi-updatevar -f ./sb/KEK.auth KEK && efi-updatevar -f ./sb/PK.auth PK`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := trust.ParseValidity(validFor)
			if err != nil {
				return usageError{err.Error()}
			}
			if org == "" {
				return usageError{"keys uefi: --org NAME is required"}
			}
			res, err := secureboot.Generate(args[0], secureboot.GenerateOptions{Org: org, ValidFor: d, Force: force})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			for _, role := range []string{secureboot.PK, secureboot.KEK, secureboot.DB} {
				k := res.Keys[role]
				if _, err := fmt.Fprintf(w, "%-3s %s (%s)\n", role, k.Cert, k.Subject); err != nil {
					return err
				}
			}
			_, err = fmt.Fprintf(w, "owner GUID %s; .esl and .auth files in %s\n", res.Owner, res.Dir)
			return err
		},
	}
	c.Flags().StringVar(&org, "org", "", "organisation name in the certificate subjects (required)")
	c.Flags().StringVar(&validFor, "valid-for", "20y", "certificate validity (firmware does not check it)")
	c.Flags().BoolVar(&force, "force", false, "replace existing Secure Boot keys (machines enrolled with the old ones will refuse new images)")
	return c
}
