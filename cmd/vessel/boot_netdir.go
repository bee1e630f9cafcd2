package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/boot/netdir"
	"github.com/vesselos/vessel/internal/trust"
)

func init() { addBootCommand(bootNetdirCmd) }

func bootNetdirCmd(g *globals) *cobra.Command {
	var ukiPath, out, certPath string
	c := &cobra.Command{
		Use:   "netdir --uki kernel.efi -o DIR",
		Short: "Write what a PXE/TFTP/HTTP boot server serves: the signed UKI that boots from a registry",
		Long: `netdir writes DIR for a network-boot server:

  ` + netdir.BootFile + `   the UKI (the TFTP boot file, DHCP option 67, or an HTTP boot URL's file)
  ` + netdir.DnsmasqFile + `  an example dnsmasq configuration (DHCP + TFTP for UEFI x86-64 clients)
  ` + netdir.RecordFile + `   what the UKI is: size, SHA-256, signers, command line, manifest

The UKI must be validly signed (with --cert: by that db certificate) and its
command line must name the manifest to boot: vessel.manifest=docker://HOST/REPO@sha256:...
(or :TAG, resolved once at boot), or vessel.manifest=dhcp (the reference
comes from DHCP option 224). The initrd pulls that signed manifest and its
images and verifies them with the CA and product ID it carries. See docs/boot.md.`,
		Example: `  vessel boot uki --kernel vmlinuz --initrd initrd.img --key sb/db.key --cert sb/db.crt \
      --cmdline "console=ttyS0 vessel.manifest=docker://registry.lan:5000/acme/system:stable" -o kernel.efi
  vessel boot netdir --uki kernel.efi --cert sb/db.crt -o /srv/tftp
  qemu-system-x86_64 ... -netdev user,id=n0,tftp=/srv/tftp,bootfile=bootx64.efi -device virtio-net-pci,netdev=n0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ukiPath == "" || out == "" {
				return usageError{"boot netdir: --uki and -o are required"}
			}
			o := netdir.Options{UKI: ukiPath, Dir: out}
			if certPath != "" {
				certs, err := trust.LoadCerts(certPath)
				if err != nil {
					return fmt.Errorf("boot netdir: %w", err)
				}
				o.Cert = certs[0]
			}
			res, err := netdir.Write(o)
			if err != nil {
				return fmt.Errorf("boot %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s/%s: %d bytes, sha256 %s, signed by %v\n", res.Dir, res.BootFile, res.Size, res.SHA256, res.Signers)
			fmt.Fprintf(w, "  boots manifest %s (product %s)\n", res.Manifest, res.ProductID)
			fmt.Fprintf(w, "  %s/%s: example DHCP + TFTP configuration\n", res.Dir, netdir.DnsmasqFile)
			return nil
		},
	}
	c.Flags().StringVar(&ukiPath, "uki", "", "the signed UKI (vessel boot uki) whose command line names the manifest; required")
	c.Flags().StringVarP(&out, "output", "o", "", "directory to write; required")
	c.Flags().StringVar(&certPath, "cert", "", "fail unless this db certificate (PEM or DER) made a valid signature")
	return c
}
