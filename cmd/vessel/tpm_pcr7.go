package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/boot/pcr7"
)

func tpmPCR7Cmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "pcr7",
		Short: "Predict PCR7 offline from Secure Boot keys, or replay it from an event log",
	}
	c.AddCommand(tpmPCR7PredictCmd(g))
	return c
}

func tpmPCR7PredictCmd(g *globals) *cobra.Command {
	var o pcr7.Options
	var explain bool
	c := &cobra.Command{
		Use:   "predict (--keys DIR [--dbx FILE] | --vars VARS.fd) [--signer db.crt] [--eventlog FILE [--explain]]",
		Short: "Print the sha256 PCR7 a machine will have, from its Secure Boot keys or its event log",
		Long: `predict computes, without a TPM, the sha256-bank PCR7 that UEFI firmware with
Secure Boot on leaves after it loads a UKI: the SecureBoot, PK, KEK, db and dbx
variables, the separator, and the db certificate that verified the UKI
(EV_EFI_VARIABLE_AUTHORITY), as EDK2/OVMF measures them.

The inputs are a key directory (vessel keys uefi; only the certificates and
owner.guid are read) with an optional --dbx (SHA-256 hex lines or an EFI
signature list, as for 'vessel boot vars'), or an OVMF variable store (--vars;
--dbx replaces its dbx). --signer names the db certificate that signed the UKI
(default: the key set's db certificate; with --vars, the only one in db).

--eventlog replays a machine's TCG2 event log
(/sys/kernel/security/tpm0/binary_bios_measurements) instead; with --keys or
--vars as well, the prediction is compared with the log, and --explain lists
both event by event and names the first difference (a mismatch is an error).
A log without the db authority event gets a warning: some firmware never
measures it, and a prediction that includes it cannot match.

The printed value is what 'vessel tpm policy sign --pcr7' takes.`,
		Example: `  vessel tpm pcr7 predict --keys ./sb
  vessel tpm pcr7 predict --keys ./sb --dbx revoked.txt
  vessel tpm pcr7 predict --vars VARS.fd --signer ./sb/db.crt --json
  vessel tpm pcr7 predict --eventlog /sys/kernel/security/tpm0/binary_bios_measurements
  vessel tpm pcr7 predict --keys ./sb --eventlog log.bin --explain
  vessel tpm policy sign --key policy.key --pcr7 "$(vessel tpm pcr7 predict --keys ./sb)" -o policy.signed`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if explain && (o.EventLog == "" || (o.Keys == "" && o.Vars == "")) {
				return usageError{"tpm pcr7 predict: --explain needs --eventlog and one of --keys or --vars"}
			}
			switch {
			case o.Keys != "" && o.Vars != "":
				return usageError{"tpm pcr7 predict: give --keys or --vars, not both"}
			case o.Keys == "" && o.Vars == "" && o.EventLog == "":
				return usageError{"tpm pcr7 predict: give --keys DIR, --vars VARS.fd or --eventlog FILE"}
			case o.Keys == "" && o.Vars == "" && (o.DBX != "" || o.Signer != ""):
				return usageError{"tpm pcr7 predict: --dbx and --signer go with --keys or --vars"}
			}
			r, err := pcr7.Run(o)
			if err != nil {
				return err
			}
			if r.Log != nil {
				for _, w := range r.Log.Warnings {
					fmt.Fprintln(cmd.ErrOrStderr(), "warning: "+w)
				}
			}
			out := cmd.OutOrStdout()
			if g.json {
				if err := printJSON(out, r); err != nil {
					return err
				}
			} else if explain || r.Match != nil {
				if err := printPCR7Explain(out, r, explain); err != nil {
					return err
				}
			} else if _, err := fmt.Fprintln(out, r.PCR7); err != nil {
				return err
			}
			if r.Difference != nil {
				return fmt.Errorf("predicted PCR7 %s, the log replays %s: first difference at PCR7 event %d: %s",
					r.Prediction.PCR7, r.Log.PCR7, r.Difference.Index, r.Difference.Reason)
			}
			return nil
		},
	}
	c.Flags().StringVar(&o.Keys, "keys", "", "Secure Boot key directory (vessel keys uefi)")
	c.Flags().StringVar(&o.Vars, "vars", "", "OVMF variable store to read PK, KEK, db, dbx and SecureBootEnable from")
	c.Flags().StringVar(&o.DBX, "dbx", "", "dbx content: SHA-256 hex digests one per line, or an EFI signature list")
	c.Flags().StringVar(&o.Signer, "signer", "", "db certificate that signed the UKI (default: the db certificate)")
	c.Flags().StringVar(&o.EventLog, "eventlog", "", "TCG2 event log to replay (binary_bios_measurements)")
	c.Flags().BoolVar(&explain, "explain", false, "list predicted and logged events side by side and name the first difference")
	return c
}

// printPCR7Explain prints the events of the prediction and the log side by
// side, then both values and the verdict.
func printPCR7Explain(w io.Writer, r *pcr7.Report, all bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	short := func(e *pcr7.Event) string {
		if e == nil {
			return "-"
		}
		return e.Digest.String()[:16]
	}
	if all {
		fmt.Fprintln(tw, "#\tTYPE\tPREDICTED\tLOGGED\tEVENT")
		p, l := r.Prediction.Events, r.Log.Events
		for i := 0; i < len(p) || i < len(l); i++ {
			var pe, le *pcr7.Event
			if i < len(p) {
				pe = &p[i]
			}
			if i < len(l) {
				le = &l[i]
			}
			e := pe
			if e == nil {
				e = le
			}
			mark := ""
			if r.Difference != nil && r.Difference.Index == i {
				mark = "  <- first difference"
			}
			desc := e.Description
			if pe != nil && le != nil && le.Description != pe.Description {
				desc = "predicted " + pe.Description + "; logged " + le.Description
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s%s\n", i, e.TypeName, short(pe), short(le), desc, mark)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "match: the prediction equals the log, event by event"
	if r.Difference != nil {
		verdict = fmt.Sprintf("MISMATCH at event %d: %s", r.Difference.Index, r.Difference.Reason)
	}
	_, err := fmt.Fprintf(w, "predicted PCR7  %s\nlog PCR7        %s\n%s\n", r.Prediction.PCR7, r.Log.PCR7, verdict)
	return err
}
