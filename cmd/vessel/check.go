package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/build"
)

func init() { addCommand(checkCmd) }

func checkCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Check that this machine can build images (stacker check)",
		Long: `Check what vessel build needs on this machine, as stacker check does, and
print one line per check: pass, fail, warn or info, what was found, and for
fail and warn the fix.

Required (fail): the overlay and squashfs filesystems, loop devices,
device-mapper (dm-verity), mksquashfs, an OCI runtime (runc or crun) and a
store on a filesystem that can hold an overlay upper directory (not NFS,
not overlayfs). Optional (warn): erofs and mkfs.erofs (erofs layers),
fuse, squashfuse, newuidmap/newgidmap, unprivileged user namespaces and
the user's subordinate id ranges (rootless builds), unsquashfs. Info: the
kernel and the emulators registered for other architectures.

Run it as the user who builds (under sudo, $SUDO_USER's subordinate ids
are checked). The exit code is 1 when a required check fails. Nothing is
changed.`,
		Example: `  vessel check
  vessel check --json | jq '.checks[] | select(.status != "pass")'
  sudo vessel check                 # as root, with $SUDO_USER's subordinate ids`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := g.storeRoot()
			if err != nil {
				return err
			}
			checks, cerr := build.CheckHost(build.HostOptions{StoreRoot: root})
			if cerr != nil && !errors.Is(cerr, build.ErrHostCheck) {
				return cerr
			}
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), struct {
					OK     bool              `json:"ok"`
					Checks []build.HostCheck `json:"checks"`
				}{cerr == nil, checks}); err != nil {
					return err
				}
			} else {
				printChecks(cmd, checks)
			}
			if cerr != nil {
				var failed []string
				for _, c := range checks {
					if c.Status == build.CheckFail {
						failed = append(failed, c.Name)
					}
				}
				return fmt.Errorf("%w: %s failed", cerr, strings.Join(failed, ", "))
			}
			return nil
		},
	}
}

// printChecks writes one aligned line per check, its hint below it.
func printChecks(cmd *cobra.Command, checks []build.HostCheck) {
	w := cmd.OutOrStdout()
	width := 0
	for _, c := range checks {
		width = max(width, len(c.Name))
	}
	for _, c := range checks {
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", strings.ToUpper(c.Status), width, c.Name, c.Detail)
		if c.Hint != "" {
			fmt.Fprintf(w, "      %-*s  fix: %s\n", width, "", c.Hint)
		}
	}
}
