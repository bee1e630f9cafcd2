package main

import (
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/userns"
)

func init() { addCommand(binfmtCmd) }

func binfmtCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "binfmt",
		Short: "Run other architectures' images: qemu-user emulators in binfmt_misc",
		Long: `Images built for another architecture (arm64 on an amd64 machine) run
through qemu-user: the kernel's binfmt_misc hands each foreign executable
to a static emulator from Debian's qemu-user-static package.

vessel registers them with the F flag (the kernel opens the emulator at
registration, so it works inside containers and user namespaces), under
names starting with vessel-qemu-, and removes only those. An architecture
another entry already handles with the F flag (Debian's own qemu-aarch64,
for one) is left alone. See docs/binfmt.md.`,
		Example: `  vessel binfmt status
  vessel binfmt install                 # every architecture vessel knows
  vessel binfmt install --arch arm64
  vessel binfmt remove`,
	}
	c.AddCommand(binfmtStatusCmd(g), binfmtInstallCmd(g), binfmtRemoveCmd(g))
	return c
}

func binfmtStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the registered binfmt_misc entries and which architectures run here",
		Example: `  vessel binfmt status
  vessel binfmt status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := binfmt.Read("")
			if err != nil {
				return err
			}
			st.Sort()
			if g.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			w := cmd.OutOrStdout()
			if !st.Mounted {
				fmt.Fprintf(w, "binfmt_misc is not mounted at %s (vessel binfmt install mounts it)\n", binfmt.Dir)
				return nil
			}
			state := "enabled"
			if !st.Enabled {
				state = "disabled"
			}
			fmt.Fprintf(w, "binfmt_misc: %s\n", state)
			for _, e := range st.Entries {
				arch, owner, on := e.Arch, "other", "enabled"
				if arch == "" {
					arch = "-"
				}
				if e.Ours {
					owner = "vessel"
				}
				if !e.Enabled {
					on = "disabled"
				}
				fmt.Fprintf(w, "%-26s %-8s %-7s flags=%-4s %-8s %s\n", e.Name, arch, owner, e.Flags, on, e.Interpreter)
			}
			var runs []string
			for _, a := range platform.Known() {
				if binfmt.Check(a) == nil {
					runs = append(runs, a)
				}
			}
			fmt.Fprintf(w, "runs: %s\n", strings.Join(runs, " "))
			return nil
		},
	}
}

func printBinfmtResults(cmd *cobra.Command, g *globals, res []binfmt.Result) error {
	if g.json {
		if res == nil {
			res = []binfmt.Result{}
		}
		return printJSON(cmd.OutOrStdout(), res)
	}
	w := cmd.OutOrStdout()
	if len(res) == 0 {
		fmt.Fprintln(w, "nothing to do")
	}
	for _, r := range res {
		switch r.Action {
		case "handled":
			fmt.Fprintf(w, "%s: already handled by %s (%s), left alone\n", r.Entry.Arch, r.By, r.Entry.Interpreter)
		default:
			fmt.Fprintf(w, "%s: %s %s (%s)\n", r.Entry.Arch, r.Action, r.Entry.Name, r.Entry.Interpreter)
		}
	}
	return nil
}

func binfmtInstallCmd(g *globals) *cobra.Command {
	var arches []string
	c := &cobra.Command{
		Use:   "install [--arch ARCH]...",
		Short: "Register Debian's qemu-user-static emulators with the F flag (root)",
		Long: `Register the static qemu-user emulators of Debian's qemu-user-static package
(/usr/bin/qemu-MACHINE-static, magic and mask from
/usr/lib/binfmt.d/qemu-MACHINE.conf) with the F flag, mounting binfmt_misc
first when needed. Default: every architecture vessel knows except this
machine's. Registrations last until reboot.`,
		Example: `  apt-get install qemu-user-static && vessel binfmt install
  vessel binfmt install --arch arm64 --arch riscv64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			want := arches
			if len(want) == 0 {
				want = platform.Known()
			}
			es, err := binfmt.Plan(want, "", "")
			if err != nil {
				return err
			}
			res, err := binfmt.Install("", es)
			if perr := printBinfmtResults(cmd, g, res); err == nil {
				err = perr
			}
			return err
		},
	}
	c.Flags().StringArrayVar(&arches, "arch", nil, "architecture to register: arm64, arm, riscv64... (repeatable; default all)")
	return c
}

func binfmtRemoveCmd(g *globals) *cobra.Command {
	var arches []string
	c := &cobra.Command{
		Use:   "remove [--arch ARCH]...",
		Short: "Unregister vessel's emulators (others' entries stay)",
		Example: `  vessel binfmt remove
  vessel binfmt remove --arch arm64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := binfmt.Remove("", arches)
			if perr := printBinfmtResults(cmd, g, res); err == nil {
				err = perr
			}
			return err
		},
	}
	c.Flags().StringArrayVar(&arches, "arch", nil, "architecture to unregister (repeatable; default all of vessel's)")
	return c
}

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
