package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/initrd"
)

func init() { addCommand(initCmd) }

// initCmd is the PID-1 stage under another name (hidden: the initrd runs
// vessel as /init, which main dispatches directly).
func initCmd(g *globals) *cobra.Command {
	var host bool
	c := &cobra.Command{
		Use:     "init [--host]",
		Example: `  # not for people: the initrd's /init and the verified host's /sbin/init are vessel itself`,
		Short:   "Run as PID 1 in the initrd (what /init does), or with --host in the verified host root (what /sbin/init does)",
		Hidden:  true,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getpid() != 1 {
				return usageError{"init: runs only as PID 1 in vessel's initrd or verified host (it powers the machine off)"}
			}
			if host {
				initrd.HostMain()
			}
			initrd.Main()
			return nil
		},
	}
	c.Flags().BoolVar(&host, "host", false, "be the host's init after the initrd's switch_root")
	return c
}
