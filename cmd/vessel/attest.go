package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

func init() { addCommand(attestCmd) }

func attestCmd(g *globals) *cobra.Command {
	f := &tpmFlags{}
	c := &cobra.Command{
		Use:   "attest",
		Short: "Prove to a remote verifier which signed product this machine runs (TPM quote)",
		Long: `attest quotes the machine's TPM with an attestation key certified by the
machine identity key, over the firmware PCRs 0-7 and vessel's PCR 15 (the
manifest the initrd verified), and verifies such quotes elsewhere: identity
chain, AK certification, signature, nonce, replay of the firmware's and
vessel's event logs, Secure Boot signer, manifest CA and allow list.
See docs/attest.md.`,
	}
	c.PersistentFlags().StringVar(&f.dev, "tpm", envOr("VESSEL_TPM", envOr("TPM2TOOLS_TCTI", tpm.DefaultDevice)), "TPM: /dev/tpmrm0, /dev/tpm0, swtpm:HOST:PORT, a unix socket path ($VESSEL_TPM, else $TPM2TOOLS_TCTI)")
	c.PersistentFlags().StringVar(&f.state, "state", "", "TPM state directory (default <root>/tpm)")
	c.AddCommand(attestKeyCmd(g, f), attestQuoteCmd(g, f), attestVerifyCmd(g))
	return c
}

// identityCertPath is where the machine keeps its identity certificate.
func identityCertPath(st tpm.State, flag string) string {
	if flag != "" {
		return flag
	}
	return filepath.Join(st.Dir, "identity.pem")
}

// attestationKey returns the state's AK, certifying a new one with the
// identity key (authorized by a) when there is none.
func attestationKey(t *tpm.TPM, st tpm.State, a *authFlags, stdin io.Reader) (*tpm.AK, error) {
	if ak, err := st.ReadAK(); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return ak, err
	}
	id, err := identity(t, st, a, stdin)
	if err != nil {
		return nil, err
	}
	return t.AttestationKey(st, id)
}

// identity returns the identity key authorized as authFlags.authorize
// says.
func identity(t *tpm.TPM, st tpm.State, a *authFlags, stdin io.Reader) (*tpm.Identity, error) {
	p, rec, err := a.authorize(t, st, stdin)
	if err != nil {
		return nil, err
	}
	return t.Identity(st, p, rec)
}

func attestKeyCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	c := &cobra.Command{
		Use:   "key",
		Short: "Create the attestation key and have the identity key certify it",
		Long: `key creates the attestation key (AK) in the TPM and certifies it with the
identity key (TPM2_Certify), keeping both in the state directory. The identity
key signs only under the signed policy (its approval for this boot's PCR7, or
its identity approval after 'vessel tpm lock'); later quotes need only the AK.
It does nothing when the AK exists. 'attest quote' does it too when needed.`,
		Example: `  vessel attest key --policy policy.signed`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			var ak *tpm.AK
			if err := f.withTPM(func(t *tpm.TPM) (err error) {
				ak, err = attestationKey(t, st, &a, cmd.InOrStdin())
				return err
			}); err != nil {
				return fmt.Errorf("attest key: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"akPublic": ak.Blob.Public.String()})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "attestation key certified by the identity key (%s)\n", filepath.Join(st.Dir, "ak.json"))
			return nil
		},
	}
	a.add(c)
	return c
}

func attestQuoteCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	var nonceHex, out, idCert, manifestFile, fwLog, vLog string
	c := &cobra.Command{
		Use:   "quote --nonce HEX -o quote.json",
		Short: "Quote PCRs 0-7 and 15 with the verifier's nonce, with both event logs",
		Long: `quote has the TPM sign PCRs 0-7 and 15 with the verifier's nonce, using the
attestation key (certified by the identity key; created and certified first
if there is none, which needs the identity key's policy), and writes the quote
with the identity certificate, the firmware event log, vessel's measurement
log and, with --manifest, the signed manifest.`,
		Example: `  vessel attest quote --nonce "$(openssl rand -hex 32)" -o quote.json
  vessel attest quote --nonce $NONCE --manifest /var/lib/vessel/manifest.signed -o quote.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{"attest quote: -o FILE is required"}
			}
			nonce, err := parseNonce(nonceHex)
			if err != nil {
				return err
			}
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			cert, err := bounded.ReadFile(identityCertPath(st, idCert), trust.MaxPEMFileSize)
			if err != nil {
				return fmt.Errorf("attest quote: identity certificate: %w", err)
			}
			var signed []byte
			if manifestFile != "" {
				if signed, err = bounded.ReadFile(manifestFile, trust.MaxSignedSize); err != nil {
					return fmt.Errorf("attest quote: %w", err)
				}
			}
			var q *attest.Quote
			if err := f.withTPM(func(t *tpm.TPM) (err error) {
				if _, err = attestationKey(t, st, &a, cmd.InOrStdin()); err != nil {
					return err
				}
				q, err = attest.Make(attest.MakeOptions{TPM: t, State: st, IdentityCert: cert, Nonce: nonce,
					FirmwareLog: fwLog, VesselLog: vLog, Manifest: signed})
				return err
			}); err != nil {
				return fmt.Errorf("attest quote: %w", err)
			}
			b, err := q.Marshal()
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return fmt.Errorf("attest quote: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"quote": out, "pcrs": attest.PCRs})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (PCRs %v)\n", out, attest.PCRs)
			return nil
		},
	}
	a.add(c)
	c.Flags().StringVar(&nonceHex, "nonce", "", "the verifier's nonce, hex (16 to 64 bytes)")
	c.Flags().StringVarP(&out, "output", "o", "", "quote file to write (JSON)")
	c.Flags().StringVar(&idCert, "identity-cert", "", "the machine identity certificate (default STATE/identity.pem)")
	c.Flags().StringVar(&manifestFile, "manifest", "", "the signed system manifest this machine runs (lets the verifier check its CA)")
	c.Flags().StringVar(&fwLog, "eventlog", attest.FirmwareLogFile, "the firmware's TCG event log")
	c.Flags().StringVar(&vLog, "measurements", "", "vessel's measurement log (default /run/vessel/measurements.jsonl)")
	return c
}

func parseNonce(s string) ([]byte, error) {
	if s == "" {
		return nil, usageError{"--nonce HEX is required (for example: openssl rand -hex 32)"}
	}
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) < attest.MinNonce || len(b) > attest.MaxNonce {
		return nil, usageError{fmt.Sprintf("--nonce: want %d to %d bytes of hex", attest.MinNonce, attest.MaxNonce)}
	}
	return b, nil
}

// policyFlags are the verifier's policy, shared with cluster serve.
type policyFlags struct {
	machineCA, manifestCA, productID string
	allow, signers                   []string
	allowSBOff                       bool
}

func (p *policyFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&p.machineCA, "machine-ca", "", "machine identity CA certificate (PEM), required")
	c.Flags().StringVar(&p.manifestCA, "manifest-ca", "", "manifest-signing CA certificate (PEM): the quote's signed manifest must chain to it")
	c.Flags().StringVar(&p.productID, "product-id", "", "product UUID the machine and its manifest must have")
	c.Flags().StringArrayVar(&p.allow, "allow-manifest", nil, "allowed manifest digest (sha256:HEX); repeat; default any")
	c.Flags().StringArrayVar(&p.signers, "uki-signer", nil, "db certificate (PEM) allowed to have verified the UKI; repeat; default any")
	c.Flags().BoolVar(&p.allowSBOff, "allow-secure-boot-off", false, "accept a machine with Secure Boot off")
}

func (p *policyFlags) load() (attest.Policy, error) {
	if p.machineCA == "" {
		return attest.Policy{}, usageError{"--machine-ca FILE is required"}
	}
	pol := attest.Policy{ProductID: p.productID, AllowManifests: p.allow, AllowSecureBootOff: p.allowSBOff}
	var err error
	if pol.MachineCAs, err = trust.LoadCerts(p.machineCA); err != nil {
		return pol, err
	}
	if p.manifestCA != "" {
		if pol.ManifestCAs, err = trust.LoadCerts(p.manifestCA); err != nil {
			return pol, err
		}
	}
	for _, s := range p.signers {
		cs, err := trust.LoadCerts(s)
		if err != nil {
			return pol, err
		}
		pol.UKISigners = append(pol.UKISigners, cs...)
	}
	return pol, nil
}

func attestVerifyCmd(g *globals) *cobra.Command {
	var pf policyFlags
	var nonceHex, revoked string
	c := &cobra.Command{
		Use:   "verify quote.json --nonce HEX --machine-ca CA.pem [--manifest-ca CA.pem] [--product-id UUID] [--allow-manifest DIGEST]...",
		Short: "Verify a quote and report the machine, its boot signer and its manifest against a policy",
		Long: `verify checks a quote from 'vessel attest quote' (no TPM needed): the identity
certificate chains to --machine-ca; the attestation key is certified by the
identity key; the quote is signed by that key over PCRs 0-7 and 15 with
--nonce; the firmware's log replays to PCRs 0-7 (PCR7 then vessel's lock) and
vessel's log to PCR 15. It then reports the machine ID, product ID, Secure
Boot state and db signer of the UKI, the running manifest's digest and
version, and checks them against the policy flags. Any failure is named; the
exit status is 1 when anything failed.`,
		Example: `  vessel attest verify quote.json --nonce $NONCE --machine-ca keys/identity-ca.pem \
      --manifest-ca keys/manifest-ca.pem --product-id $PID --allow-manifest sha256:4f3c...
  vessel attest verify quote.json --nonce $NONCE --machine-ca ca.pem --uki-signer sb/db.crt --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			nonce, err := parseNonce(nonceHex)
			if err != nil {
				return err
			}
			pol, err := pf.load()
			if err != nil {
				return err
			}
			if revoked != "" {
				if pol.Revoked, err = attest.ReadRevoked(revoked); err != nil {
					return err
				}
			}
			b, err := bounded.ReadFile(args[0], 16<<20)
			if err != nil {
				return fmt.Errorf("attest verify: %w", err)
			}
			q, err := attest.ParseQuote(b)
			if err != nil {
				return fmt.Errorf("attest verify: %w", err)
			}
			r, verr := attest.Verify(q, nonce, pol)
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), r); err != nil {
					return err
				}
			} else {
				printAttestReport(cmd.OutOrStdout(), r)
			}
			return verr
		},
	}
	pf.add(c)
	c.Flags().StringVar(&nonceHex, "nonce", "", "the nonce the machine was asked to quote, hex")
	c.Flags().StringVar(&revoked, "revoked", "", "revoked identity certificate serials, one per line (as vessel cluster revoke writes)")
	return c
}

func printAttestReport(w io.Writer, r *attest.Report) {
	status := "VERIFIED"
	if !r.OK {
		status = "REFUSED"
	}
	fmt.Fprintf(w, "%s\n", status)
	if r.MachineID != "" {
		fmt.Fprintf(w, "machine:     %s (identity serial %s)\n", r.MachineID, r.IdentitySerial)
		fmt.Fprintf(w, "product:     %s\n", r.ProductID)
	}
	if r.PCRs != nil && len(r.Checks) >= 5 && r.Checks[4].OK {
		fmt.Fprintf(w, "secure boot: %v\n", onOff(r.SecureBoot))
		signer := strings.Join(r.UKISigners, ", ")
		if signer == "" {
			signer = "none measured"
		}
		fmt.Fprintf(w, "uki signer:  %s\n", signer)
		fmt.Fprintf(w, "locked:      %v\n", r.Locked)
	}
	if r.Manifest != nil {
		fmt.Fprintf(w, "manifest:    %s version %d (product %s)\n", r.Manifest.Digest, r.Manifest.Version, r.Manifest.ProductID)
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %-12s %s\n", mark, c.Name, c.Detail)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
