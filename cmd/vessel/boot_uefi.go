package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/boot/ovmf"
	"github.com/vesselos/vessel/internal/boot/uki"
	"github.com/vesselos/vessel/internal/trust"
)

func init() {
	addBootCommand(bootVarsCmd)
	addBootCommand(bootUKICmd)
	addBootCommand(bootInspectCmd)
}

func bootVarsCmd(g *globals) *cobra.Command {
	var o ovmf.MakeOptions
	c := &cobra.Command{
		Use:   "vars --keys DIR -o VARS.fd",
		Short: "Write an OVMF variable store that enforces a Secure Boot key set (for VMs)",
		Long: `vars copies the empty OVMF variable store template and adds PK, KEK and db
from DIR (made by 'vessel keys uefi'), dbx if given, SecureBootEnable=1 and
CustomMode=0: the firmware boots in user mode with Secure Boot on and accepts
only images signed by db.key. --dbx takes SHA-256 hex digests (one per line)
or an EFI signature list. The template must be empty.`,
		Example: `  vessel boot vars --keys ./sb -o VARS.fd
  vessel boot vars --keys ./sb --dbx revoked.txt --template /usr/share/OVMF/OVMF_VARS_4M.fd -o VARS.fd
  qemu-system-x86_64 -machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd \
    -drive if=pflash,format=raw,unit=1,file=VARS.fd ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Keys == "" || o.Output == "" {
				return usageError{"boot vars: --keys DIR and -o VARS.fd are required"}
			}
			res, err := ovmf.Make(o)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %s (owner %s), %d bytes free\n", res.Path,
				strings.Join(res.Variables, ", "), res.Owner, res.Free)
			return err
		},
	}
	c.Flags().StringVar(&o.Keys, "keys", "", "Secure Boot key directory (vessel keys uefi)")
	c.Flags().StringVarP(&o.Output, "output", "o", "", "VARS file to write")
	c.Flags().StringVar(&o.Template, "template", ovmf.DefaultTemplate, "empty OVMF variable store to start from")
	c.Flags().StringVar(&o.DBX, "dbx", "", "revoked image digests: SHA-256 hex one per line, or an EFI signature list")
	return c
}

func bootUKICmd(g *globals) *cobra.Command {
	var o uki.MakeOptions
	c := &cobra.Command{
		Use:   "uki --kernel vmlinuz --initrd initrd.img --cmdline \"...\" --key db.key --cert db.crt -o kernel.efi",
		Short: "Build and sign a unified kernel image (kernel + initrd + command line)",
		Long: `uki adds the kernel (.linux), initrd (.initrd), command line (.cmdline),
os-release (.osrel), kernel release (.uname, read from the kernel unless
--uname) and SBAT (.sbat: the stub's and the kernel's lines plus --sbat) to the
systemd-boot EFI stub and signs the result with the db key (Authenticode).
Firmware with that db verifies all of it before it runs. The same inputs give
the same bytes.`,
		Example: `  vessel boot uki --kernel /boot/vmlinuz-6.1.0-28-amd64 --initrd initrd.img \
    --cmdline "console=ttyS0" --key sb/db.key --cert sb/db.crt -o kernel.efi
  sbverify --cert sb/db.crt kernel.efi
  vessel boot inspect kernel.efi`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var missing []string
			for _, f := range []struct{ v, name string }{{o.Kernel, "--kernel"}, {o.Initrd, "--initrd"},
				{o.Key, "--key"}, {o.Cert, "--cert"}, {o.Output, "-o"}} {
				if f.v == "" {
					missing = append(missing, f.name)
				}
			}
			if len(missing) > 0 {
				return usageError{"boot uki: missing " + strings.Join(missing, ", ")}
			}
			res, err := uki.Make(o)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %d bytes, kernel %s, signed by %s\nsha256 %s\n",
				res.Path, res.Size, res.Uname, res.Signer, res.SHA256)
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&o.Kernel, "kernel", "", "EFI-stub kernel image (vmlinuz)")
	f.StringVar(&o.Initrd, "initrd", "", "initrd (newc cpio, compressed or not)")
	f.StringVar(&o.Cmdline, "cmdline", "", "kernel command line")
	f.StringVar(&o.OSRelease, "os-release", "", "os-release file for .osrel (default: a minimal Vessel one)")
	f.StringVar(&o.Uname, "uname", "", "kernel release for .uname (default: read from the kernel)")
	f.StringVar(&o.SBAT, "sbat", "", "SBAT CSV lines to add to the stub's")
	f.StringVar(&o.Stub, "stub", uki.DefaultStub, "systemd-boot EFI stub")
	f.StringVar(&o.Key, "key", "", "db private key (PEM)")
	f.StringVar(&o.Cert, "cert", "", "db certificate (PEM)")
	f.StringVarP(&o.Output, "output", "o", "", "kernel.efi to write")
	return c
}

// errInvalidUKI makes 'boot inspect' exit non-zero for an image whose
// signatures do not hold (after printing the report).
var errInvalidUKI = errors.New("the image's signatures do not match its content")

func bootInspectCmd(g *globals) *cobra.Command {
	var requireSigned bool
	var certPath string
	c := &cobra.Command{
		Use:   "inspect kernel.efi [--cert db.crt]",
		Short: "Show a UKI's sections, command line, kernel, SBAT, signers, manifest CA and product ID",
		Long: `inspect reads a unified kernel image: its PE sections, command line,
os-release, kernel release, SBAT, each Authenticode signer (subject, issuer,
whether the signed digest matches the file and the signature verifies) and,
from an uncompressed initrd, the manifest CA and product ID it carries.
It exits with status 1 if a signature does not match the file (or, with
--signed, if there is none; with --cert, unless that certificate made a
valid signature). It does not decide trust: that is the firmware's db.`,
		Example: `  vessel boot inspect kernel.efi
  vessel boot inspect --cert sb/db.crt kernel.efi
  vessel boot inspect --json kernel.efi | jq .signatures`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var want *x509.Certificate
			if certPath != "" {
				certs, err := trust.LoadCerts(certPath)
				if err != nil {
					return fmt.Errorf("inspect: %w", err)
				}
				want = certs[0]
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("inspect: %w", err)
			}
			r, err := uki.Inspect(b)
			if err != nil {
				return fmt.Errorf("inspect %s: %w", args[0], err)
			}
			if g.json {
				err = printJSON(cmd.OutOrStdout(), r)
			} else {
				err = printUKIReport(cmd, args[0], r)
			}
			if err != nil {
				return err
			}
			if (len(r.Signatures) > 0 || requireSigned) && !r.Valid() {
				return fmt.Errorf("inspect %s: %w", args[0], errInvalidUKI)
			}
			if want != nil && !r.SignedBy(want) {
				return fmt.Errorf("inspect %s: no valid signature by %s (%s)", args[0], certPath, want.Subject)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&requireSigned, "signed", false, "fail if the image has no valid signature")
	c.Flags().StringVar(&certPath, "cert", "", "fail unless this certificate (PEM or DER) made a valid signature")
	return c
}

func printUKIReport(cmd *cobra.Command, path string, r *uki.Report) error {
	w := cmd.OutOrStdout()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d bytes, sha256 %s\n", path, r.Size, r.SHA256)
	fmt.Fprintf(&b, "sections:\n")
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "  %-9s vma 0x%08x size 0x%08x\n", s.Name, s.VirtualAddress, s.VirtualSize)
	}
	fmt.Fprintf(&b, "cmdline: %s\n", r.Cmdline)
	if r.OSRelease != nil {
		name := r.OSRelease["PRETTY_NAME"]
		if name == "" {
			name = r.OSRelease["NAME"]
		}
		fmt.Fprintf(&b, "os-release: %s (ID=%s", name, r.OSRelease["ID"])
		if v := r.OSRelease["VERSION_ID"]; v != "" {
			fmt.Fprintf(&b, " VERSION_ID=%s", v)
		}
		fmt.Fprintf(&b, ")\n")
	}
	if r.Uname != "" {
		fmt.Fprintf(&b, "uname: %s\n", r.Uname)
	}
	if r.SBAT != "" {
		fmt.Fprintf(&b, "sbat:\n")
		for _, line := range strings.Split(strings.TrimSpace(r.SBAT), "\n") {
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	if in := r.Initrd; in != nil {
		fmt.Fprintf(&b, "initrd: %d bytes, %d files", in.Size, in.Files)
		if len(in.Compressed) > 0 {
			fmt.Fprintf(&b, " (compressed: %s)", strings.Join(in.Compressed, ", "))
		}
		if in.Undecoded != "" {
			fmt.Fprintf(&b, ", then a %s-compressed part (not read)", in.Undecoded)
		}
		fmt.Fprintf(&b, "\n")
		if in.ManifestCA != "" {
			fmt.Fprintf(&b, "  manifest CA: %s (sha256 %s)\n", in.ManifestCA, in.ManifestCASHA256)
		}
		if in.ProductID != "" {
			fmt.Fprintf(&b, "  product ID: %s\n", in.ProductID)
		}
		if in.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", in.Error)
		}
	}
	fmt.Fprintf(&b, "authenticode sha256: %s\n", r.Digest)
	if len(r.Signatures) == 0 {
		fmt.Fprintf(&b, "signatures: none (unsigned: Secure Boot firmware refuses it)\n")
	}
	for i, s := range r.Signatures {
		state := "valid"
		switch {
		case !s.DigestMatches:
			state = "DIGEST MISMATCH (the file was changed after signing)"
		case !s.SignatureValid:
			state = "INVALID SIGNATURE"
		}
		fmt.Fprintf(&b, "signature %d: %s\n  subject: %s\n  issuer:  %s\n  cert sha256: %s\n", i+1, state, s.Subject, s.Issuer, s.CertSHA256)
		if s.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", s.Error)
		}
	}
	if !r.ChecksumOK {
		fmt.Fprintf(&b, "warning: the PE checksum field is wrong (firmware ignores it)\n")
	}
	_, err := fmt.Fprint(w, b.String())
	return err
}
