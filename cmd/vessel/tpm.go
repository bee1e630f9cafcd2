package main

import (
	"bufio"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

func init() { addCommand(tpmCmd) }

// tpmFlags are shared by every tpm subcommand.
type tpmFlags struct {
	dev   string
	state string
}

func (f *tpmFlags) open() (*tpm.TPM, error) { return tpm.Open(f.dev) }

func (f *tpmFlags) stateDir(g *globals) (tpm.State, error) {
	if f.state != "" {
		return tpm.State{Dir: f.state}, nil
	}
	root, err := g.storeRoot()
	if err != nil {
		return tpm.State{}, err
	}
	return tpm.State{Dir: filepath.Join(root, "tpm")}, nil
}

// withTPM opens the TPM, runs fn and closes it, keeping fn's error first.
func (f *tpmFlags) withTPM(fn func(*tpm.TPM) error) (err error) {
	t, err := f.open()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := t.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close TPM: %w", cerr)
		}
	}()
	return fn(t)
}

// authFlags select how an operation under the seal policy is authorized.
type authFlags struct {
	policy   string
	recovery bool
}

func (a *authFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&a.policy, "policy", "", "signed policy file (default STATE/policy.signed, else the one in STATE/policies/ for the current PCR7)")
	c.Flags().BoolVar(&a.recovery, "recovery", false, "authorize with the recovery secret, read from stdin, instead of a signed policy")
}

// authorize returns the signed policy or the recovery secret for an
// operation: --policy, --recovery, STATE/policy.signed, or else the policy
// shipped in STATE/policies/ for the TPM's current PCR7 (after the boot's
// lock: its identity approval), as the initrd and vessel attest choose.
func (a *authFlags) authorize(t *tpm.TPM, st tpm.State, stdin io.Reader) (*tpm.SignedPolicy, []byte, error) {
	if a.policy == "" && !a.recovery {
		if _, err := os.Stat(filepath.Join(st.Dir, "policy.signed")); err != nil {
			pcr7, err := t.PCR7()
			if err != nil {
				return nil, nil, err
			}
			p, err := st.PolicyFor(pcr7)
			return p, nil, err
		}
	}
	return a.load(st, stdin)
}

// load returns the signed policy or the recovery secret.
func (a *authFlags) load(st tpm.State, stdin io.Reader) (*tpm.SignedPolicy, []byte, error) {
	if a.recovery {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("read recovery secret: %w", err)
		}
		sec, err := tpm.ParseRecovery(line)
		return nil, sec, err
	}
	path := a.policy
	if path == "" {
		path = filepath.Join(st.Dir, "policy.signed")
		if _, err := os.Stat(path); err != nil {
			return nil, nil, usageError{"no signed policy: give --policy FILE (from `vessel tpm policy sign`), install one as " + path + ", or use --recovery"}
		}
	}
	p, err := tpm.ReadPolicy(path)
	return p, nil, err
}

func tpmCmd(g *globals) *cobra.Command {
	f := &tpmFlags{}
	c := &cobra.Command{
		Use:   "tpm",
		Short: "Provision the TPM, seal secrets under signed PCR7 policies, use the machine identity key",
		Long: `tpm takes ownership of the machine's TPM 2.0 and seals secrets (disk keys) so
that they unseal only when PCR7 shows a kernel signed by the right key.

Sealed objects are bound to a policy-signing key, not to a PCR7 value: after a
firmware or dbx update, sign one new policy for the new PCR7 with
'vessel tpm policy sign' and every secret unseals again, without re-sealing.
Raising the policy version ('vessel tpm policy bump') revokes older policies.
A recovery secret printed once by 'provision' unseals when no policy fits.

--tpm selects the TPM: /dev/tpmrm0 (default), /dev/tpm0, swtpm:HOST:PORT or the
path of a unix socket (swtpm --server type=unixio); tpm2-tools' TCTI forms
swtpm:host=H,port=P and device:PATH work too, and $TPM2TOOLS_TCTI is the
default when $VESSEL_TPM is not set. Other TCTIs (mssim, tabrmd) are refused
at once; a TCP address that does not answer a TPM command within 3s (swtpm's
control port) is refused naming it. Sealed objects and the
provisioning record live in --state (default <root>/tpm). See docs/tpm.md.`,
	}
	c.PersistentFlags().StringVar(&f.dev, "tpm", envOr("VESSEL_TPM", envOr("TPM2TOOLS_TCTI", tpm.DefaultDevice)), "TPM: /dev/tpmrm0, /dev/tpm0, swtpm:HOST:PORT (or tpm2-tools' swtpm:host=H,port=P), a unix socket path ($VESSEL_TPM, else $TPM2TOOLS_TCTI)")
	c.PersistentFlags().StringVar(&f.state, "state", "", "state directory for sealed objects (default <root>/tpm)")
	c.AddCommand(tpmInfoCmd(g, f), tpmProvisionCmd(g, f), tpmPolicyCmd(g, f), tpmSealCmd(g, f),
		tpmUnsealCmd(g, f), tpmLockCmd(g, f), tpmIdentityCmd(g, f), tpmPCR7Cmd(g), tpmKeyCmd(g, f))
	return c
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func tpmInfoCmd(g *globals, f *tpmFlags) *cobra.Command {
	return &cobra.Command{
		Use: "info",
		Example: `  vessel tpm info
  vessel tpm info --tpm swtpm:127.0.0.1:2321 --json`,
		Short: "Show the TPM's manufacturer, firmware, algorithms, PCR banks, handles and vessel's state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			var in *tpm.Info
			if err := f.withTPM(func(t *tpm.TPM) (err error) { in, err = t.Info(); return err }); err != nil {
				return fmt.Errorf("tpm info: %w", err)
			}
			sealed, _ := st.Sealed()
			_, recErr := st.Record()
			if g.json {
				return printJSON(cmd.OutOrStdout(), struct {
					*tpm.Info
					State       string   `json:"stateDir"`
					Provisioned bool     `json:"provisioned"`
					Sealed      []string `json:"sealed"`
				}{in, st.Dir, recErr == nil, sealed})
			}
			w := cmd.OutOrStdout()
			pv := "none"
			if in.PolicyVersion != nil {
				pv = fmt.Sprint(*in.PolicyVersion)
			}
			fmt.Fprintf(w, "tpm:            %s\n", f.dev)
			fmt.Fprintf(w, "manufacturer:   %s (%s), firmware %s\n", in.Manufacturer, in.Vendor, in.FirmwareVersion)
			fmt.Fprintf(w, "pcr banks:      %s\n", strings.Join(in.PCRBanks, " "))
			fmt.Fprintf(w, "pcr7 (sha256):  %s\n", in.PCR7)
			fmt.Fprintf(w, "algorithms:     %s\n", strings.Join(in.Algorithms, " "))
			fmt.Fprintf(w, "persistent:     %s\n", strings.Join(in.Persistent, " "))
			fmt.Fprintf(w, "transient:      %d loaded\n", in.Transient)
			fmt.Fprintf(w, "srk 0x81000001: %s\n", in.SRK)
			fmt.Fprintf(w, "owned:          %v\n", in.OwnerAuthSet)
			fmt.Fprintf(w, "lockout:        %v (failures %d)\n", in.InLockout, in.LockoutCounter)
			fmt.Fprintf(w, "policy version: %s\n", pv)
			if in.AcceptedVersion != nil {
				fmt.Fprintf(w, "manifest version accepted (NV counter): %d\n", *in.AcceptedVersion)
			}
			fmt.Fprintf(w, "state:          %s (provisioned: %v, sealed: %s)\n", st.Dir, recErr == nil, strings.Join(sealed, " "))
			return nil
		},
	}
}

func tpmProvisionCmd(g *globals, f *tpmFlags) *cobra.Command {
	var keyPath string
	var force bool
	c := &cobra.Command{
		Use:   "provision --policy-key PUB.pem",
		Short: "Take ownership: SRK, policy-version and recovery NV indices, identity key, sealed owner authorization",
		Long: `provision prepares an unowned TPM for vessel. It reuses the standard ECC P-256
SRK at 0x81000001 or creates it (a different key there is reported, and
replaced only with --force), defines the policy-version and recovery NV
indices, creates the machine identity key, and sets random owner, endorsement
and lockout authorizations that are kept sealed under the same policy as
every secret.

The recovery secret is printed once, on stdout, and stored nowhere: write it
down. It unseals every secret when no signed policy matches the machine.`,
		Example: `  openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out policy.key
  openssl ec -in policy.key -pubout -out policy.pub
  vessel tpm provision --policy-key policy.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyPath == "" {
				return usageError{"tpm provision: --policy-key PUB.pem is required"}
			}
			b, err := bounded.ReadFile(keyPath, trust.MaxPEMFileSize)
			if err != nil {
				return fmt.Errorf("tpm provision: %w", err)
			}
			pub, err := tpm.ParsePublicKeyPEM(b)
			if err != nil {
				return fmt.Errorf("tpm provision: %s: %w", keyPath, err)
			}
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			var res *tpm.Provisioned
			if err := f.withTPM(func(t *tpm.TPM) (err error) {
				res, err = t.Provision(st, pub, tpm.ProvisionOptions{Force: force})
				return err
			}); err != nil {
				return fmt.Errorf("tpm provision: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			srk := "created"
			if res.SRKReused {
				srk = "reused"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "provisioned %s: SRK %s at 0x81000001, policy version %d, state in %s\n", f.dev, srk, res.Version, st.Dir)
			fmt.Fprintln(cmd.ErrOrStderr(), "recovery secret (shown once, stored nowhere; write it down):")
			_, err = fmt.Fprintln(cmd.OutOrStdout(), res.Recovery)
			return err
		},
	}
	c.Flags().StringVar(&keyPath, "policy-key", "", "public key (PEM) of the policy-signing key (ECDSA P-256)")
	c.Flags().BoolVar(&force, "force", false, "replace a non-standard key at 0x81000001 and existing vessel NV indices")
	return c
}

func tpmPolicyCmd(g *globals, f *tpmFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Sign PCR7 policies and revoke older ones",
	}
	c.AddCommand(tpmPolicySignCmd(g, f), tpmPolicyBumpCmd(g, f), tpmPolicyShowCmd(g))
	return c
}

func tpmPolicySignCmd(g *globals, f *tpmFlags) *cobra.Command {
	var keyPath, pcr7Hex, out, comment string
	var fromCurrent bool
	var version uint64
	c := &cobra.Command{
		Use:   "sign --key POLKEY.pem (--pcr7 HEX | --from-current) -o policy.signed",
		Short: "Sign a policy that allows a PCR7 value at a policy version",
		Long: `sign writes a policy file allowing the sha256-bank PCR7 value --pcr7 (or this
machine's current one with --from-current), signed by the policy key. The policy
is valid while the TPM's policy version is <= --version (default: the TPM's
current version with --from-current, else 1).

PCR7 can be predicted offline from the Secure Boot keys (the event log
replays it), so fleets sign policies without touching machines.`,
		Example: `  vessel tpm policy sign --key policy.key --from-current -o /var/lib/vessel/tpm/policy.signed
  vessel tpm policy sign --key policy.key --pcr7 3d45...e1 --version 2 -o policy-v2.signed`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyPath == "" || out == "" || (pcr7Hex == "") == !fromCurrent {
				return usageError{"tpm policy sign: need --key, -o and one of --pcr7 HEX or --from-current"}
			}
			b, err := bounded.ReadFile(keyPath, trust.MaxPEMFileSize)
			if err != nil {
				return fmt.Errorf("tpm policy sign: %w", err)
			}
			key, err := tpm.ParsePrivateKeyPEM(b)
			if err != nil {
				return fmt.Errorf("tpm policy sign: %s: %w", keyPath, err)
			}
			var pcr7 []byte
			if fromCurrent {
				if err := f.withTPM(func(t *tpm.TPM) error {
					if pcr7, err = t.PCR7(); err != nil {
						return err
					}
					if version == 0 {
						version, err = t.PolicyVersion()
					}
					return err
				}); err != nil {
					return fmt.Errorf("tpm policy sign: %w", err)
				}
			} else if pcr7, err = hex.DecodeString(strings.TrimPrefix(pcr7Hex, "0x")); err != nil {
				return usageError{"tpm policy sign: --pcr7: " + err.Error()}
			}
			if version == 0 {
				version = 1
			}
			p, err := tpm.SignPolicy(key, pcr7, version)
			if err != nil {
				return fmt.Errorf("tpm policy sign: %w", err)
			}
			p.Comment = comment
			if err := os.WriteFile(out, p.Marshal(), 0o644); err != nil {
				return fmt.Errorf("tpm policy sign: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: pcr7 %x, version %d, approved policy %x\n", out, pcr7, version, []byte(p.ApprovedPolicy))
			return err
		},
	}
	c.Flags().StringVar(&keyPath, "key", "", "policy-signing private key (PEM, ECDSA P-256)")
	c.Flags().StringVar(&pcr7Hex, "pcr7", "", "PCR7 value to allow (sha256 bank, hex)")
	c.Flags().BoolVar(&fromCurrent, "from-current", false, "allow this machine's current PCR7 (reads the TPM)")
	c.Flags().Uint64Var(&version, "version", 0, "policy version: valid while the TPM's version is <= this")
	c.Flags().StringVarP(&out, "output", "o", "", "policy file to write")
	c.Flags().StringVar(&comment, "comment", "", "free text stored in the policy file")
	return c
}

func tpmPolicyBumpCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	c := &cobra.Command{
		Use:   "bump --policy NEW.signed",
		Short: "Raise the TPM's policy version to NEW's, revoking every policy signed for an older version",
		Long: `bump writes NEW's version into the TPM's policy-version index. NEW must already
be satisfiable on this machine (it unseals the owner authorization that allows
the write), so the machine never ends up with no valid policy. Versions only go up.`,
		Example: `  vessel tpm policy sign --key policy.key --from-current --version 2 -o v2.signed
  vessel tpm policy bump --policy v2.signed`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.policy == "" {
				return usageError{"tpm policy bump: --policy NEW.signed is required"}
			}
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			p, err := tpm.ReadPolicy(a.policy)
			if err != nil {
				return fmt.Errorf("tpm policy bump: %w", err)
			}
			var rec []byte
			if a.recovery {
				if _, rec, err = (&authFlags{recovery: true}).load(st, cmd.InOrStdin()); err != nil {
					return err
				}
			}
			usePolicy := p
			if rec != nil {
				usePolicy = nil
			}
			if err := f.withTPM(func(t *tpm.TPM) error { return t.Bump(st, usePolicy, p.Version, rec) }); err != nil {
				return fmt.Errorf("tpm policy bump: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]uint64{"policyVersion": p.Version})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "policy version is now %d: policies signed for older versions are revoked\n", p.Version)
			return err
		},
	}
	a.add(c)
	return c
}

func tpmPolicyShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "show FILE",
		Example: `  vessel tpm policy show policy.signed`,
		Short:   "Check a signed policy file and print what it allows",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := tpm.ReadPolicy(args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "pcr7:     %x\nversion:  %d\nkey name: %x\nsigned:   %s\nstatus:   signature valid\n", []byte(p.PCR7), p.Version, []byte(p.KeyName), p.Created)
			return err
		},
	}
}

func tpmSealCmd(g *globals, f *tpmFlags) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:     "seal NAME < SECRET",
		Short:   "Seal up to 128 bytes from stdin under the provisioned policy",
		Example: `  head -c 32 /dev/urandom | vessel tpm seal disk`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			secret, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), tpm.MaxSecret+1))
			if err != nil {
				return fmt.Errorf("tpm seal: read stdin: %w", err)
			}
			if err := f.withTPM(func(t *tpm.TPM) error { return t.Seal(st, args[0], secret, force) }); err != nil {
				return fmt.Errorf("tpm seal: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"name": args[0], "bytes": len(secret)})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "sealed %s (%d bytes)\n", args[0], len(secret))
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "replace an existing sealed object of that name")
	return c
}

func tpmUnsealCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	c := &cobra.Command{
		Use:   "unseal NAME [--policy FILE | --recovery] > SECRET",
		Short: "Unseal a secret to stdout",
		Example: `  vessel tpm unseal disk --policy policy.signed > /run/disk.key
  echo ABCD-EFGH-... | vessel tpm unseal disk --recovery > /run/disk.key`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			var out []byte
			if err := f.withTPM(func(t *tpm.TPM) error {
				p, rec, err := a.authorize(t, st, cmd.InOrStdin())
				if err != nil {
					return err
				}
				out, err = t.Unseal(st, args[0], p, rec)
				return err
			}); err != nil {
				return fmt.Errorf("tpm unseal: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"name": args[0], "secret": out})
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	a.add(c)
	return c
}

func tpmLockCmd(g *globals, f *tpmFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "lock",
		Example: `  vessel tpm unseal disk --policy policy.signed > /run/disk.key && vessel tpm lock`,
		Short:   "Extend PCR7 so nothing later in this boot can unseal",
		Long: `lock extends PCR7 in every PCR bank with a fixed event. Run it once the
initrd has unsealed what it needs: until the next reboot no signed policy
matches PCR7, so nothing started later can unseal the disk key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var pcr []byte
			if err := f.withTPM(func(t *tpm.TPM) (err error) {
				if err = t.Lock(); err != nil {
					return err
				}
				pcr, err = t.PCR7()
				return err
			}); err != nil {
				return fmt.Errorf("tpm lock: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"pcr7": hex.EncodeToString(pcr)})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "PCR7 extended: now %x\n", pcr)
			return nil
		},
	}
}

func tpmIdentityCmd(g *globals, f *tpmFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "identity",
		Short: "Use the machine identity key (created in the TPM, never leaves it)",
	}
	c.AddCommand(tpmIdentityCSRCmd(g, f), tpmIdentitySignCmd(g, f), tpmIdentityPublicCmd(g, f))
	return c
}

func tpmIdentityCSRCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	var out, cn string
	c := &cobra.Command{
		Use:   "csr -o machine.csr",
		Short: "Write a certificate request for the identity key, signed in the TPM",
		Example: `  vessel tpm identity csr -o machine.csr
  vessel keys machine ./keys --csr machine.csr --product-id UUID --machine-id m-0001 -o machine.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{"tpm identity csr: -o FILE is required"}
			}
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			if cn == "" {
				cn = defaultMachineName()
			}
			var der []byte
			if err := f.withTPM(func(t *tpm.TPM) error {
				id, err := identity(t, st, &a, cmd.InOrStdin())
				if err != nil {
					return err
				}
				der, err = id.CSR(cn)
				return err
			}); err != nil {
				return fmt.Errorf("tpm identity csr: %w", err)
			}
			if err := os.WriteFile(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
				return fmt.Errorf("tpm identity csr: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"csr": out, "commonName": cn})
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (CN=%s)\n", out, cn)
			return nil
		},
	}
	a.add(c)
	c.Flags().StringVarP(&out, "output", "o", "", "CSR file to write (PEM)")
	c.Flags().StringVar(&cn, "cn", "", "subject common name (default /etc/machine-id, else the host name)")
	return c
}

func defaultMachineName() string {
	if b, err := os.ReadFile("/etc/machine-id"); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	h, _ := os.Hostname()
	return h
}

func tpmIdentitySignCmd(g *globals, f *tpmFlags) *cobra.Command {
	var a authFlags
	var msg, in, out string
	c := &cobra.Command{
		Use: "sign (-m MSG | --in FILE) [-o SIG]",
		Example: `  vessel tpm identity sign -m hello
  vessel tpm identity sign --in msg -o sig.der`,
		Short: "Sign a message with the identity key (ECDSA P-256, SHA-256, DER signature)",
		Long: `sign hashes the message with SHA-256 and has the TPM sign it with the identity
key. The DER signature goes to -o, or base64 to stdout. Verify it with the
public key of the machine certificate, e.g.
  openssl x509 -in machine.pem -pubkey -noout > id.pub
  openssl dgst -sha256 -verify id.pub -signature sig.der msg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var data []byte
			switch {
			case msg != "" && in == "":
				data = []byte(msg)
			case in != "" && msg == "":
				b, err := bounded.ReadFile(in, 64<<20)
				if err != nil {
					return fmt.Errorf("tpm identity sign: %w", err)
				}
				data = b
			default:
				return usageError{"tpm identity sign: give one of -m MSG or --in FILE"}
			}
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			digest := sha256.Sum256(data)
			var sig []byte
			if err := f.withTPM(func(t *tpm.TPM) error {
				id, err := identity(t, st, &a, cmd.InOrStdin())
				if err != nil {
					return err
				}
				sig, err = id.Sign(nil, digest[:], crypto.SHA256)
				return err
			}); err != nil {
				return fmt.Errorf("tpm identity sign: %w", err)
			}
			if out != "" {
				if err := os.WriteFile(out, sig, 0o644); err != nil {
					return fmt.Errorf("tpm identity sign: %w", err)
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"signature": base64.StdEncoding.EncodeToString(sig), "digest": hex.EncodeToString(digest[:])})
			}
			if out == "" {
				_, err = fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(sig))
			}
			return err
		},
	}
	a.add(c)
	c.Flags().StringVarP(&msg, "message", "m", "", "message to sign")
	c.Flags().StringVar(&in, "in", "", "file to sign")
	c.Flags().StringVarP(&out, "output", "o", "", "write the DER signature here")
	return c
}

func tpmIdentityPublicCmd(g *globals, f *tpmFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "public",
		Example: `  vessel tpm identity public > id.pub`,
		Short:   "Print the identity public key (PEM); needs no TPM",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.stateDir(g)
			if err != nil {
				return err
			}
			pub, err := tpm.IdentityPublic(st)
			if err != nil {
				return fmt.Errorf("tpm identity public: %w", err)
			}
			der, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			return err
		},
	}
}
