package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/boot/disk"
)

func init() { addBootCommand(bootDiskCmd) }

func bootDiskCmd(g *globals) *cobra.Command {
	var tf trustFlags
	var manifestPath, uki, out, size, espSize, stateSize string
	var policies []string
	c := &cobra.Command{
		Use:   "disk --manifest m.signed --uki kernel.efi --ca CA.pem --size 2G -o disk.img",
		Short: "Write a bootable disk: ESP with the signed UKI, data partition with the verified system",
		Long: `disk writes a GPT disk image (or a block device) with two partitions:

  1  EFI system partition (FAT32): /EFI/BOOT/BOOTX64.EFI = the UKI
  2  Vessel data partition (ext4), GPT name and ext4 label "vessel-data",
     type GUID ` + disk.DataType + `: a store with every image
     the signed manifest lists (tagged system/NAME:vVERSION), the signed
     manifest and its record (system/current.json), as 'vessel install' leaves it

The signed manifest is verified like 'vessel manifest verify' (--ca,
--product-id, --crl, --at) with its images checked in the local store
(--root); every image copied to the disk is verified again down to every
verity block. Nothing is written if any check fails. The data partition's
filesystem is made by mkfs.ext4 -d (e2fsprogs). See docs/boot.md.`,
		Example: `  vessel boot disk --manifest manifest.signed --uki kernel.efi --ca manifest-ca.pem \
      --product-id 0f8fad5b-d9cb-469f-a165-70867728950e --size 2G -o disk.img
  vessel boot disk --manifest manifest.signed --uki kernel.efi --ca manifest-ca.pem -o /dev/sdX
  vessel boot disk --manifest manifest.signed --uki kernel.efi --ca manifest-ca.pem --size 2G \
      --state-size 256M --tpm-policy prod.signed --tpm-policy after-dbx.signed -o disk.img
  sfdisk -d disk.img`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if manifestPath == "" || uki == "" || out == "" {
				return usageError{"boot disk: --manifest, --uki and -o are required"}
			}
			topts, err := tf.options("boot disk")
			if err != nil {
				return err
			}
			o := disk.Options{Trust: topts, UKI: uki, Output: out}
			if size != "" {
				if o.Size, err = parseSize(size); err != nil {
					return usageError{"boot disk: --size: " + err.Error()}
				}
			}
			if espSize != "" {
				if o.ESPSize, err = parseSize(espSize); err != nil {
					return usageError{"boot disk: --esp-size: " + err.Error()}
				}
			}
			if stateSize != "" {
				if o.StateSize, err = parseSize(stateSize); err != nil {
					return usageError{"boot disk: --state-size: " + err.Error()}
				}
			}
			o.Policies = policies
			if o.Signed, err = os.ReadFile(manifestPath); err != nil {
				return fmt.Errorf("boot disk: %w", err)
			}
			if o.Source, err = g.openStore(); err != nil {
				return err
			}
			res, err := disk.Write(cmd.Context(), o)
			if err != nil {
				return fmt.Errorf("boot %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: %d MiB, product %s version %d (%s)\n", res.Output, res.Size>>20, res.Product, res.Version, res.Manifest)
			parts := []disk.PartitionInfo{res.ESP, res.Data}
			if res.State != nil {
				parts = append(parts, *res.State)
			}
			for _, p := range parts {
				fmt.Fprintf(w, "  partition %d %-20s %-4s at %d MiB, %d MiB, type %s\n", p.Index, p.Name, p.FSType, p.Start>>20, p.Size>>20, p.Type)
			}
			for _, img := range res.Images {
				fmt.Fprintf(w, "  %s: %s verified, tagged %s\n", img.Name, img.Digest, img.Tag)
			}
			return nil
		},
	}
	tf.add(c.Flags())
	c.Flags().StringVar(&manifestPath, "manifest", "", "the signed system manifest; required")
	c.Flags().StringVar(&uki, "uki", "", "the signed UKI (vessel boot uki); required")
	c.Flags().StringVarP(&out, "output", "o", "", "disk image file to write (replaced) or a block device; required")
	c.Flags().StringVar(&size, "size", "", "size of a disk image file, e.g. 2G, 512M (a block device's own size is used)")
	c.Flags().StringVar(&espSize, "esp-size", "", "size of the EFI system partition (default 256M)")
	c.Flags().StringVar(&stateSize, "state-size", "", "add the encrypted state partition of this size, e.g. 256M (at least 32M)")
	c.Flags().StringArrayVar(&policies, "tpm-policy", nil, "signed TPM policy (vessel tpm policy sign) to ship on the data partition; repeatable")
	return c
}
