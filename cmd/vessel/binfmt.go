package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/platform"
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
