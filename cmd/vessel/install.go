package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/registry"
)

func init() { addCommand(installCmd) }

func installCmd(g *globals) *cobra.Command {
	var rf registryFlags
	var tf trustFlags
	var imageRepo, arch string
	c := &cobra.Command{
		Use:   "install docker://HOST/REPO[:TAG|@DIGEST] --ca CA.pem",
		Short: "Fetch, verify and install a signed system manifest and its images",
		Long: `install fetches the system manifest published with 'vessel manifest push',
finds its signature (OCI referrers API, or the sha256-<hex> tag on registries
without it) and verifies it like 'vessel manifest verify': chain to --ca only,
revocation (--crl), product (--product-id) and no rollback. It then pulls
every image the manifest pins, by digest, from the same repository (or
--image-repo), verifies each down to every verity block, tags them in the
store as system/NAME:vVERSION, and only then records the manifest as current:
<root>/system/current.json and <root>/system/manifests/<digest>.signed, and its
version in <root>/trust/versions.json.

Nothing that failed verification is recorded; what was current stays current
until the new system is complete. An interrupted install (network, power,
Ctrl-C) is finished by running the same command again: blobs already in the
store are kept and partial downloads continue where they stopped.

A system manifest is for one architecture: every image it pins must be for
this machine's (or --arch, to stage a system for another machine), else
install refuses it and installs nothing. Publish one manifest per
architecture (vessel manifest build --arch). See docs/manifest.md.` + registryHelp,
		Example: `  vessel install docker://registry.example.com/acme/product:stable --ca manifest-ca.pem
  vessel install docker://127.0.0.1:5000/acme/product:3 --ca manifest-ca.pem \
      --product-id 0f8fad5b-d9cb-469f-a165-70867728950e --plain-http --json
  vessel install docker://registry.example.com/acme/product:3-arm64 --ca manifest-ca.pem --arch arm64 --root /mnt/arm-board/vessel`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := registryRef("install", args[0])
			if err != nil {
				return err
			}
			topts, err := tf.options("install")
			if err != nil {
				return err
			}
			opts := registry.InstallOptions{Trust: topts}
			if arch != "" {
				if opts.Platform, err = platform.Parse(arch); err != nil {
					return usageError{fmt.Sprintf("--arch: %v", err)}
				}
			}
			if imageRepo != "" {
				r, err := registryRef("install: --image-repo", imageRepo)
				if err != nil {
					return err
				}
				opts.ImageRepo = &r
			}
			st, err := g.openStore()
			if err != nil {
				return err
			}
			c, finish, err := rf.client(cmd, g)
			if err != nil {
				return err
			}
			cur, err := c.Install(cmd.Context(), st, ref, opts)
			finish()
			if err != nil {
				return err
			}
			if g.json {
				return printResultEvent(cmd.OutOrStdout(), cur)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "installed product %s version %d (%s), signed by %q\n", cur.Product, cur.Version, cur.Digest, cur.Signer)
			for _, img := range cur.Images {
				fmt.Fprintf(w, "  %s: %s verified, tagged %s\n", img.Name, img.Digest, img.Tag)
			}
			if cur.Previous != "" && cur.Previous != cur.Digest {
				fmt.Fprintf(w, "  previous: %s\n", cur.Previous)
			}
			return nil
		},
	}
	rf.add(c)
	tf.add(c.Flags())
	c.Flags().StringVar(&imageRepo, "image-repo", "", "pull the images from this docker://HOST/REPO instead of the manifest's repository")
	c.Flags().StringVar(&arch, "arch", "", "the architecture of the machine installed for (default: this one's); images for another are refused")
	return c
}
