package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/cluster"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

func init() { addCommand(clusterCmd) }

func clusterCmd(g *globals) *cobra.Command {
	f := &tpmFlags{}
	c := &cobra.Command{
		Use:   "cluster",
		Short: "Admit attested machines into a cluster (serve) and join one (join)",
		Long: `cluster serve admits a machine over mutual TLS whose client key is the
machine's TPM-resident identity key, only if its identity chains to the
machine CA, its product matches and a fresh TPM quote (the server's nonce)
shows an allowed manifest; it then returns a short-lived certificate from the
cluster CA. cluster join is the machine's side. Every join attests again;
serials in the revocation file are refused. See docs/attest.md.`,
	}
	c.PersistentFlags().StringVar(&f.dev, "tpm", envOr("VESSEL_TPM", envOr("TPM2TOOLS_TCTI", tpm.DefaultDevice)), "TPM (join): /dev/tpmrm0, /dev/tpm0, swtpm:HOST:PORT, a unix socket path")
	c.PersistentFlags().StringVar(&f.state, "state", "", "TPM state directory (join; default <root>/tpm)")
	c.AddCommand(clusterCACmd(g), clusterServeCmd(g), clusterJoinCmd(g, f), clusterRevokeCmd(g))
	return c
}

func clusterCACmd(g *globals) *cobra.Command {
	var org, dir string
	var validity time.Duration
	c := &cobra.Command{
		Use:     "ca --org NAME -o DIR",
		Short:   "Create the cluster CA (cluster-ca.pem, cluster-ca.key)",
		Example: `  vessel cluster ca --org Acme -o ./cluster`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if org == "" || dir == "" {
				return usageError{"cluster ca: --org NAME and -o DIR are required"}
			}
			cert, key, err := cluster.NewCA(org, validity)
			if err != nil {
				return fmt.Errorf("cluster ca: %w", err)
			}
			if err := cluster.WriteCA(dir, cert, key); err != nil {
				return fmt.Errorf("cluster ca: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"cert": filepath.Join(dir, cluster.CACert), "key": filepath.Join(dir, cluster.CAKey)})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s and %s\n", filepath.Join(dir, cluster.CACert), filepath.Join(dir, cluster.CAKey))
			return nil
		},
	}
	c.Flags().StringVar(&org, "org", "", "organisation name")
	c.Flags().StringVarP(&dir, "output", "o", "", "directory to write the CA into")
	c.Flags().DurationVar(&validity, "validity", 10*365*24*time.Hour, "CA validity")
	return c
}

func clusterServeCmd(g *globals) *cobra.Command {
	var pf policyFlags
	var addr, addrFile, caDir, revoked string
	var names []string
	var validity time.Duration
	c := &cobra.Command{
		Use:   "serve --addr HOST:PORT --ca DIR --machine-ca CA.pem [policy flags]",
		Short: "Admit machines that attest to an allowed manifest; hand out short-lived cluster certificates",
		Long: `serve listens for HTTPS with client certificates (TLS 1.3). A machine proves its
identity key in the handshake, gets a single-use nonce, posts a quote for it;
the quote is verified like 'vessel attest verify' with the policy flags, and
must be for the TLS peer's identity. A machine whose identity certificate
serial is in --revoked (one serial per line, re-read on every join) is
refused. Each join and refusal is logged on stderr. Stops on SIGINT/SIGTERM.`,
		Example: `  vessel cluster serve --addr 127.0.0.1:8443 --ca ./cluster --machine-ca keys/identity-ca.pem \
      --manifest-ca keys/manifest-ca.pem --product-id $PID --allow-manifest sha256:4f3c... --uki-signer sb/db.crt
  vessel cluster revoke --revoked ./cluster/revoked 0x3f2a...   # takes effect at the next join`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" || caDir == "" {
				return usageError{"cluster serve: --addr HOST:PORT and --ca DIR are required"}
			}
			pol, err := pf.load()
			if err != nil {
				return err
			}
			ca, key, err := cluster.ReadCA(caDir)
			if err != nil {
				return fmt.Errorf("cluster serve: %w", err)
			}
			srv := &cluster.Server{Policy: pol, CA: ca, CAKey: key, Validity: validity, RevokedFile: revoked, Log: cmd.ErrOrStderr()}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.ListenAndServe(ctx, addr, names, func(a string) {
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster: listening on https://%s\n", a)
				if addrFile != "" {
					// written whole, then renamed: a script polling for it never reads half
					if err := os.WriteFile(addrFile+".tmp", []byte(a+"\n"), 0o644); err == nil {
						_ = os.Rename(addrFile+".tmp", addrFile)
					}
				}
			})
		},
	}
	pf.add(c)
	c.Flags().StringVar(&addr, "addr", "", "address to listen on (HOST:PORT)")
	c.Flags().StringVar(&addrFile, "addr-file", "", "write the address listened on (HOST:PORT) to this file once listening (with --addr 127.0.0.1:0)")
	c.Flags().StringVar(&caDir, "ca", "", "cluster CA directory (from vessel cluster ca)")
	c.Flags().StringVar(&revoked, "revoked", "", "revocation file: serials refused at join")
	c.Flags().StringArrayVar(&names, "name", nil, "extra host name or IP for the server certificate; repeat")
	c.Flags().DurationVar(&validity, "validity", cluster.DefaultValidity, "lifetime of a cluster certificate")
	return c
}

func clusterJoinCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	var caFile, out, idCert, manifestFile, fwLog, vLog string
	c := &cobra.Command{
		Use:   "join https://HOST:PORT --ca cluster-ca.pem",
		Short: "Join a cluster: TLS with the identity key, a fresh quote, a cluster certificate back",
		Long: `join connects to a 'vessel cluster serve' with the machine's identity
certificate and its TPM-resident identity key (which signs under the signed
policy: its approval for this boot's PCR7, or its identity approval after
'vessel tpm lock'; --policy or --recovery choose), quotes the server's nonce
and writes the cluster certificate.`,
		Example: `  vessel cluster join https://10.0.2.100:8443 --ca cluster-ca.pem -o /run/vessel/cluster.pem \
      --manifest /var/lib/vessel/manifest.signed`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if caFile == "" {
				return usageError{"cluster join: --ca cluster-ca.pem is required"}
			}
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			cas, err := trust.LoadCerts(caFile)
			if err != nil {
				return err
			}
			cert, err := bounded.ReadFile(identityCertPath(st, idCert), trust.MaxPEMFileSize)
			if err != nil {
				return fmt.Errorf("cluster join: identity certificate: %w", err)
			}
			var signed []byte
			if manifestFile != "" {
				if signed, err = bounded.ReadFile(manifestFile, trust.MaxSignedSize); err != nil {
					return fmt.Errorf("cluster join: %w", err)
				}
			}
			if out == "" {
				out = filepath.Join(st.Dir, "cluster.pem")
			}
			var cred *cluster.Credential
			if err := f.withTPM(func(t *tpm.TPM) error {
				id, err := identity(t, st, &a, cmd.InOrStdin())
				if err != nil {
					return err
				}
				if _, err := t.AttestationKey(st, id); err != nil {
					return err
				}
				cred, err = cluster.Join(cmd.Context(), args[0], cluster.JoinOptions{
					Identity: id, IdentityCert: cert, ClusterCAs: cas,
					Quote: func(nonce []byte) (*attest.Quote, error) {
						return attest.Make(attest.MakeOptions{TPM: t, State: st, IdentityCert: cert, Nonce: nonce,
							FirmwareLog: fwLog, VesselLog: vLog, Manifest: signed})
					}})
				return err
			}); err != nil {
				return fmt.Errorf("cluster join: %w", err)
			}
			if err := cluster.WriteCredential(out, cred); err != nil {
				return fmt.Errorf("cluster join: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), cred)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "joined: cluster certificate %s for %s until %s (%s)\n",
				cred.Serial, cred.Report.MachineID, cred.NotAfter.UTC().Format(time.RFC3339), out)
			return nil
		},
	}
	a.add(c)
	c.Flags().StringVar(&caFile, "ca", "", "cluster CA certificate (PEM) to verify the server")
	c.Flags().StringVarP(&out, "output", "o", "", "where to write the cluster certificate (default STATE/cluster.pem)")
	c.Flags().StringVar(&idCert, "identity-cert", "", "the machine identity certificate (default STATE/identity.pem)")
	c.Flags().StringVar(&manifestFile, "manifest", "", "the signed system manifest this machine runs")
	c.Flags().StringVar(&fwLog, "eventlog", attest.FirmwareLogFile, "the firmware's TCG event log")
	c.Flags().StringVar(&vLog, "measurements", "", "vessel's measurement log (default /run/vessel/measurements.jsonl)")
	return c
}

func clusterRevokeCmd(g *globals) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:     "revoke --revoked FILE SERIAL...",
		Short:   "Refuse machines by identity certificate serial at their next join",
		Example: `  vessel cluster revoke --revoked ./cluster/revoked 0x3f2a9c...`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return usageError{"cluster revoke: --revoked FILE is required"}
			}
			for _, s := range args {
				if err := cluster.Revoke(file, s); err != nil {
					return fmt.Errorf("cluster revoke: %w", err)
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"revoked": args})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "revoked %d serial(s) in %s\n", len(args), file)
			return nil
		},
	}
	c.Flags().StringVar(&file, "revoked", "", "revocation file (as given to cluster serve --revoked)")
	return c
}
