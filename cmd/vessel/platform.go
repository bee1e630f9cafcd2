package main

// Platforms on the command line: --arch for run, the image index command,
// and the emulation checks made before running a foreign image.

import (
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/userns"
)

// imageFor reads the image ref for the platform arch ("" : this machine's)
// and checks that it can run here: its config names that platform (an
// image, or the entry of a multi-arch index), and a foreign architecture
// has an emulator registered (package binfmt).
func imageFor(s *store.Store, ref, arch string) (*mount.Image, error) {
	var want ocispec.Platform
	if arch != "" {
		p, err := platform.Parse(arch)
		if err != nil {
			return nil, usageError{fmt.Sprintf("--arch: %v", err)}
		}
		want = p
	}
	d, err := s.ResolveImage(ref, want)
	if err != nil {
		return nil, err
	}
	name := ref
	if top, err := s.Resolve(ref); err == nil && top.Digest != d.Digest {
		name = d.Digest.String() // the platform's image of an index
	}
	img, err := mount.LocalImage(s, name)
	if err != nil {
		return nil, err
	}
	have := platform.OfConfig(img.Config())
	if want.Architecture != "" && !platform.Match(want, have) {
		return nil, fmt.Errorf("image %s is for %s, not %s: %w (build it with --arch %s, or drop --arch)", ref, platform.String(have), platform.String(want), platform.ErrNoMatch, want.Architecture)
	}
	if err := binfmt.Check(have.Architecture); err != nil {
		return nil, fmt.Errorf("image %s is for %s: %w", ref, platform.String(have), err)
	}
	return img, nil
}

func imageIndexCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "index NAME[:TAG] IMAGE...",
		Short: "Combine images of different architectures into one multi-arch image",
		Long: `Write an OCI image index over the IMAGEs (each for one platform, as its
config says; a multi-arch IMAGE adds all of its images) and tag it
NAME[:TAG]. Commands that run or mount NAME pick this machine's image from
it (--arch picks another); push and pull carry the whole index. vessel
build --arch amd64,arm64 writes such an index for each image itself.`,
		Example: `  vessel image create web:amd64 --layer rootfs-amd64
  vessel image create web:arm64 --layer rootfs-arm64 --arch arm64
  vessel image index web:1 web:amd64 web:arm64
  vessel push web:1 docker://registry.example/acme/web:1`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			res, err := image.Index(s, args[0], args[1:])
			if err != nil {
				return err
			}
			return printCreated(cmd, g, res)
		},
	}
}

// checkEmulationOutside checks, before a rootless command enters its user
// namespace (where binfmt_misc cannot be read), that the architectures of
// --arch (a comma list) run here. As root the build and run check
// themselves, for every image.
func checkEmulationOutside(arch string) error {
	if arch == "" || !userns.Needed() {
		return nil
	}
	ps, err := platform.ParseList(arch)
	if err != nil {
		return usageError{fmt.Sprintf("--arch: %v", err)}
	}
	for _, p := range ps {
		if err := binfmt.Check(p.Architecture); err != nil {
			return err
		}
	}
	return nil
}
