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
	return &cobra.Command{
		Use:     "init",
		Example: `  # not for people: the initrd's /init is vessel itself`,
		Short:   "Run as PID 1 in the initrd (what /init does)",
		Hidden:  true,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getpid() != 1 {
				return usageError{"init: runs only as PID 1 in vessel's initrd (it powers the machine off)"}
			}
			initrd.Main()
			return nil
		},
	}
}
