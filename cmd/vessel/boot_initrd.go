package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/boot/initrd"
)

func init() { addBootCommand(bootInitrdCmd) }

func bootInitrdCmd(g *globals) *cobra.Command {
	var o initrd.Options
	var out string
	c := &cobra.Command{
		Use:   "initrd --ca manifest-ca.pem --product-id UUID --modules /lib/modules/VERSION -o initrd.img",
		Short: "Build the initrd: vessel as /init, kernel modules, the manifest CA and the product ID",
		Long: `initrd writes a newc cpio archive with no shell and no busybox:

  /init                         this vessel binary (static; or --vessel PATH)
  /dev/console                  char 5:1 (the kernel opens it for /init)
  /lib/modules/VERSION/...      the modules the boot needs, with their dependencies
                                read from each module's .modinfo (depends=, softdep pre:)
  /etc/vessel/modules           the module load order, one path per line
  /etc/vessel/manifest-ca.pem   the manifest-signing CA
  /etc/vessel/product-id        the product UUID
  /etc/vessel/tpm-policy.pem    with --tpm-policy-key: the key that signs TPM policies;
                                the initrd then provisions the TPM at first boot and
                                unlocks the encrypted state partition (docs/tpm.md)
  /etc/vessel/registry-ca.pem   --registry-ca: the registry's TLS CA (network boot)
  /etc/vessel/registry-auth.json  --registry-auth: registry credentials (network boot; mode 0600)

The default modules are virtio_pci virtio_blk virtio_net loop dm_verity dm_crypt xts
squashfs erofs overlay efivarfs ext4 button evdev tpm_tis tpm_crb vfat nls_cp437 nls_ascii i6300esb; --module replaces the list. Compressed modules
(.ko.xz, .ko.zst, .ko.gz) are stored uncompressed (their signature stays
valid). The archive is zstd-compressed unless --compress none. The same
inputs give the same bytes. See docs/boot.md.`,
		Example: `  vessel boot initrd --ca keys/manifest-ca.pem --product-id 0f8fad5b-d9cb-469f-a165-70867728950e \
      --modules /lib/modules/6.1.0-57-amd64 -o initrd.img
  vessel boot initrd --ca ca.pem --product-id $ID --modules /lib/modules/$(uname -r) \
      --module virtio_blk --module dm-verity -o initrd.img --json
  vessel boot initrd --ca ca.pem --product-id $ID --modules /lib/modules/$(uname -r) \
      --tpm-policy-key policy.pub -o initrd.img
  vessel boot initrd --ca ca.pem --product-id $ID --modules /lib/modules/$(uname -r) \
      --registry-ca registry-ca.pem --registry-auth auth.json -o initrd.img   # for a network boot
  zstd -dc initrd.img | cpio -tv`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.CA == "" || o.ProductID == "" || o.Modules == "" || out == "" {
				return usageError{"boot initrd: --ca, --product-id, --modules and -o are required"}
			}
			if o.Vessel == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("boot initrd: find the running vessel binary (pass --vessel): %w", err)
				}
				o.Vessel = exe
			}
			start := time.Now()
			p, err := initrd.Build(o, out)
			if err != nil {
				return fmt.Errorf("boot %w", err)
			}
			st, err := os.Stat(out)
			if err != nil {
				return fmt.Errorf("boot initrd: %w", err)
			}
			elapsed := time.Since(start)
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{
					"initrd": out, "size": st.Size(), "kernel": p.Kernel, "modules": p.Modules,
					"builtin": p.Builtin, "entries": len(p.Entries), "compress": p.Compress,
					"seconds": elapsed.Seconds(),
				})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %d bytes, %d entries, kernel %s, %d modules (%s), built in %.2fs\n",
				out, st.Size(), len(p.Entries), p.Kernel, len(p.Modules), joinOr(p.Modules, "none"), elapsed.Seconds())
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&o.CA, "ca", "", "manifest-signing CA certificate (PEM); required")
	f.StringVar(&o.ProductID, "product-id", "", "product UUID; required")
	f.StringVar(&o.RegistryCA, "registry-ca", "", "network boot: the registry's TLS CA certificate (PEM)")
	f.StringVar(&o.RegistryAuth, "registry-auth", "", "network boot: registry credentials (containers auth.json)")
	f.StringVar(&o.Modules, "modules", "", "kernel modules tree, /lib/modules/VERSION; required")
	f.StringArrayVar(&o.Names, "module", nil, "module to include with its dependencies (repeatable; replaces the default list)")
	f.StringVar(&o.PolicyKey, "tpm-policy-key", "", "TPM policy-signing public key (PEM): the initrd seals and unseals with the TPM")
	f.StringVar(&o.Vessel, "vessel", "", "static vessel binary to use as /init (default: this one)")
	f.StringVar(&o.Compress, "compress", initrd.CompressZstd, "archive compression: zstd or none")
	f.StringVarP(&out, "output", "o", "", "where to write the initrd; required")
	return c
}

func joinOr(s []string, empty string) string {
	if len(s) == 0 {
		return empty
	}
	out := s[0]
	for _, x := range s[1:] {
		out += " " + x
	}
	return out
}
