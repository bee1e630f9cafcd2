package main

import (
	"fmt"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

func init() { addCommand(manifestCmd) }

func manifestCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "manifest",
		Short: "Build, sign and verify system manifests",
		Long: `A system manifest names the product, a version and every image a machine runs
(the host rootfs and each service) by digest. It is signed with the product
key; verification checks the signature, the certificate chain up to the
manifest-signing CA, revocation, the product ID and the version, and is the
gate every later stage passes through. See docs/manifest.md.`,
	}
	c.AddCommand(manifestBuildCmd(g), manifestSignCmd(g), manifestVerifyCmd(g), manifestExtractCmd(g), manifestPushCmd(g))
	return c
}

func manifestBuildCmd(g *globals) *cobra.Command {
	var out, pid, keys, arch string
	c := &cobra.Command{
		Use:   "build SYSTEM.yaml -o MANIFEST.json [--arch ARCH]",
		Short: "Pin every image of system.yaml to its digest in the store",
		Long: `Pin every image of system.yaml to its image manifest digest in the store.

A system manifest is for one architecture: each image is resolved for
--arch (default: this machine's), a multi-arch image (an index) gives its
image for that architecture, and an image for another architecture is
refused. A product for amd64 and arm64 has one manifest per architecture,
each signed and pushed under its own tag.

A service gets exactly the capabilities its capabilities: lists; without
the key (or with []) it gets none, and build notes each such service;
capabilities: default gives the runtime's default set. See
docs/manifest.md.`,
		Example: `  vessel manifest build system.yaml --keys ./keys -o manifest.json
  vessel manifest build system.yaml --product-id 0f8fad5b-d9cb-469f-a165-70867728950e -o manifest.json
  vessel manifest build system.yaml --keys ./keys --arch arm64 -o manifest-arm64.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bounded.ReadFile(args[0], manifest.MaxSystemSize)
			if err != nil {
				return fmt.Errorf("manifest build: %w", err)
			}
			sys, err := manifest.ParseSystem(args[0], b)
			if err != nil {
				return fmt.Errorf("manifest build: %w", err)
			}
			if pid == "" && keys != "" && sys.Product != "" {
				certs, err := trust.LoadCerts(filepath.Join(keys, trust.ProductsDir, sys.Product, trust.ProductCert))
				if err != nil {
					return fmt.Errorf("manifest build: product %q: %w", sys.Product, err)
				}
				if pid, err = trust.ProductID(certs[0]); err != nil {
					return fmt.Errorf("manifest build: %w", err)
				}
			}
			root, err := g.storeRoot()
			if err != nil {
				return err
			}
			st, err := store.Open(root)
			if err != nil {
				return fmt.Errorf("manifest build: %w", err)
			}
			var p ocispec.Platform
			if arch != "" {
				if p, err = platform.Parse(arch); err != nil {
					return usageError{fmt.Sprintf("--arch: %v", err)}
				}
			}
			m, err := manifest.Build(sys, store.PlatformImages{Store: st, Platform: p}, manifest.BuildOptions{ProductID: pid})
			if err != nil {
				return fmt.Errorf("manifest build: %w", err)
			}
			data, err := m.Marshal()
			if err != nil {
				return fmt.Errorf("manifest build: %w", err)
			}
			for _, name := range sys.NoCapabilitiesKey() {
				fmt.Fprintf(cmd.ErrOrStderr(), "vessel: note: service %s has no capabilities: key and runs with none; write capabilities: default for the runtime's default set, or run vessel caps learn --manifest %s --service %s --write\n", name, args[0], name)
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			if err := os.WriteFile(out, data, 0o644); err != nil {
				return fmt.Errorf("manifest build: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"manifest": out, "product": m.Product, "version": m.Version, "images": len(m.Images())})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: product %s version %d, %d images\n", out, m.Product, m.Version, len(m.Images()))
			return err
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "where to write the manifest (default stdout)")
	c.Flags().StringVar(&arch, "arch", "", "the architecture the manifest is for: arm64, amd64... (default: this machine's)")
	c.Flags().StringVar(&pid, "product-id", "", "product UUID, when system.yaml names the product by name")
	c.Flags().StringVar(&keys, "keys", "", "key directory to look the product ID up in (DIR/products/NAME/product.pem)")
	return c
}

func manifestSignCmd(g *globals) *cobra.Command {
	var keyPath, certPath, chainPath, out, detached string
	var tk tpmKeyFlags
	c := &cobra.Command{
		Use:   "sign MANIFEST.json --key KEY --cert CERT [--chain CHAIN] -o SIGNED",
		Short: "Sign the exact bytes of a manifest with a product key",
		Example: `  vessel manifest sign manifest.json --key keys/products/acme/product.key \
      --cert keys/products/acme/product.pem -o manifest.signed
  vessel manifest sign manifest.json --key product.key --cert product.pem -o manifest.signed --detached-sig manifest.sig
  openssl dgst -sha256 -verify product.pub -signature manifest.sig manifest.json
  vessel manifest sign manifest.json --key tpm:product.tpmkey --cert product.pem -o manifest.signed   # key held by the TPM`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyPath == "" || certPath == "" || out == "" {
				return usageError{"manifest sign: --key, --cert and -o are required"}
			}
			signer, err := trust.SignFile(trust.SignFiles{Manifest: args[0], Key: keyPath, Cert: certPath, Chain: chainPath, Output: out, DetachedSig: detached,
				TPM: tk.opener(cmd.InOrStdin())})
			if err != nil {
				return fmt.Errorf("manifest %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"signed": out, "signer": signer.Subject.String()})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: signed by %s\n", out, signer.Subject.CommonName)
			return err
		},
	}
	c.Flags().StringVar(&keyPath, "key", "", "product private key: a PEM file, or tpm:FILE for a key held by the TPM")
	c.Flags().StringVar(&certPath, "cert", "", "product certificate (PEM)")
	c.Flags().StringVar(&chainPath, "chain", "", "intermediate certificates (PEM), if any")
	c.Flags().StringVarP(&out, "output", "o", "", "where to write the signed manifest")
	c.Flags().StringVar(&detached, "detached-sig", "", "also write the raw signature (DER) here, for openssl dgst")
	tk.add(c)
	return c
}

func manifestVerifyCmd(g *globals) *cobra.Command {
	var tf trustFlags
	var minVersion int64
	var images, noRecord bool
	c := &cobra.Command{
		Use:   "verify SIGNED --ca CA.pem",
		Short: "Verify a signed manifest: signature, chain, revocation, product, version",
		Long: `verify accepts a signed manifest only if every check passes and otherwise
names the first that failed: the file parses strictly; the product
certificate chains to the given CA only (never system roots), is valid at
--at (default now) and has the right key usages; no certificate is revoked
(--crl); the signature matches the exact manifest bytes; the manifest parses
strictly; its product is the certificate's product (and --product-id); with
--images, every image is in the store with the exact digest and verity-
protected layers; its version is not lower than the highest version this
machine accepted (kept in <root>/trust/versions.json; a successful verify
records it unless --no-record; --min-version N replaces the record).`,
		Example: `  vessel manifest verify manifest.signed --ca keys/manifest-ca.pem
  vessel manifest verify manifest.signed --ca manifest-ca.pem --crl crl.pem --product-id 0f8fad5b-d9cb-469f-a165-70867728950e --images
  vessel manifest verify manifest.signed --ca manifest-ca.pem --at 2030-01-01T00:00:00Z --min-version 3 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := tf.options("manifest verify")
			if err != nil {
				return err
			}
			var root string
			if images || !cmd.Flags().Changed("min-version") {
				if root, err = g.storeRoot(); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("min-version") {
				opts.MinVersion = minVersion
			} else {
				opts.Versions = trust.OpenVersions(root)
				opts.Record = !noRecord
			}
			if images {
				st, err := store.Open(root)
				if err != nil {
					return fmt.Errorf("manifest verify: %w", err)
				}
				opts.Images = st
			}
			signed, err := bounded.ReadFile(args[0], trust.MaxSignedSize)
			if err != nil {
				return fmt.Errorf("manifest verify: %w", err)
			}
			vm, err := trust.Verify(signed, opts)
			if err != nil {
				return fmt.Errorf("manifest verify: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), vm.Summary())
			}
			s := vm.Summary()
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "verified: product %s version %d (%s), signed by %q, %d images%s\n",
				s.Product, s.Version, s.Digest, vm.Signer().Subject.CommonName, s.Images, map[bool]string{true: " (checked in the store)", false: ""}[s.ImagesChecked])
			return err
		},
	}
	tf.add(c.Flags())
	c.Flags().Int64Var(&minVersion, "min-version", 0, "lowest acceptable version (replaces the store's record; nothing is recorded)")
	c.Flags().BoolVar(&images, "images", false, "also check every image is in the store with the exact digest and verity layers")
	c.Flags().BoolVar(&noRecord, "no-record", false, "do not record this version as accepted")
	return c
}

func manifestExtractCmd(g *globals) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "extract SIGNED -d DIR",
		Short: "Write the parts of a signed manifest as files, for checking with openssl",
		Long: `extract writes DIR/manifest.json (the exact signed bytes), DIR/manifest.sig
(the DER signature), DIR/signer.pem (product certificate) and DIR/chain.pem
(intermediates, possibly empty). It verifies nothing; see docs/manifest.md for
the openssl commands that check them independently.`,
		Example: `  vessel manifest extract manifest.signed -d parts
  openssl verify -CAfile manifest-ca.pem -untrusted parts/chain.pem parts/signer.pem
  openssl x509 -in parts/signer.pem -pubkey -noout > parts/product.pub
  openssl dgst -sha256 -verify parts/product.pub -signature parts/manifest.sig parts/manifest.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usageError{"manifest extract: -d is required"}
			}
			b, err := bounded.ReadFile(args[0], trust.MaxSignedSize)
			if err != nil {
				return fmt.Errorf("manifest extract: %w", err)
			}
			s, err := trust.ParseSigned(b)
			if err != nil {
				return fmt.Errorf("manifest extract: %s: %w", args[0], err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("manifest extract: %w", err)
			}
			files := map[string][]byte{
				"manifest.json": s.Payload,
				"manifest.sig":  s.Signature,
				"signer.pem":    trust.PEMCerts(s.Certificates[0]),
				"chain.pem":     trust.PEMCerts(s.Certificates[1:]...),
			}
			for _, n := range []string{"manifest.json", "manifest.sig", "signer.pem", "chain.pem"} {
				if err := os.WriteFile(filepath.Join(dir, n), files[n], 0o644); err != nil {
					return fmt.Errorf("manifest extract: %w", err)
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"dir": dir})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: manifest.json manifest.sig signer.pem chain.pem\n", dir)
			return err
		},
	}
	c.Flags().StringVarP(&dir, "dir", "d", "", "output directory")
	return c
}

func manifestPushCmd(g *globals) *cobra.Command {
	var rf registryFlags
	var noImages bool
	c := &cobra.Command{
		Use:   "push SIGNED docker://HOST/REPO[:TAG]",
		Short: "Publish a signed manifest (and its images) to a registry as an OCI artifact",
		Long: `push publishes a signed manifest so that 'vessel install' can find it:
first every image the manifest pins, from the store to the same repository by
digest (unless --no-images); then the manifest's exact bytes as an OCI
artifact (artifactType application/vnd.vessel.system-manifest.v1+json) under
the tag; then the signature and certificate chain as a referrer of that
artifact (OCI 1.1 referrers API, or the sha256-<hex> tag on registries
without it). It verifies nothing: installers do.` + registryHelp,
		Example: `  vessel manifest push manifest.signed docker://registry.example.com/acme/product:3
  vessel manifest push manifest.signed docker://127.0.0.1:5000/acme/product:stable --plain-http --no-images`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := registryRef("manifest push", args[1])
			if err != nil {
				return err
			}
			signed, err := bounded.ReadFile(args[0], trust.MaxSignedSize)
			if err != nil {
				return fmt.Errorf("manifest push: %w", err)
			}
			var st *store.Store
			if !noImages {
				if st, err = g.openStore(); err != nil {
					return err
				}
			}
			c, finish, err := rf.client(cmd, g)
			if err != nil {
				return err
			}
			res, err := c.PushSigned(cmd.Context(), signed, ref, st)
			finish()
			if err != nil {
				return err
			}
			if g.json {
				return printResultEvent(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pushed %s to %s\n  manifest %s\n  signature %s", args[0], res.Ref, res.Manifest.Digest, res.Signature.Digest)
			if res.FallbackTag != "" {
				fmt.Fprintf(w, " (referrers tag %s)", res.FallbackTag)
			}
			fmt.Fprintln(w)
			for _, r := range res.Images {
				fmt.Fprintf(w, "  image %s (%d blobs, %s transferred)\n", r.Descriptor.Digest, r.Blobs, humanSize(r.Transferred))
			}
			return nil
		},
	}
	rf.add(c)
	c.Flags().BoolVar(&noImages, "no-images", false, "push only the manifest and its signature, not the images it pins")
	return c
}
