package main

import "github.com/spf13/cobra"

// bootCommands holds the constructors of the `vessel boot` subcommands; each
// boot artifact registers itself from its own file with addBootCommand.
var bootCommands []func(*globals) *cobra.Command

func addBootCommand(f func(*globals) *cobra.Command) { bootCommands = append(bootCommands, f) }

func init() { addCommand(bootCmd) }

func bootCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "boot",
		Short: "Make the artifacts that boot a machine: OVMF variables, initrd, signed UKI, disk image",
		Long: `vessel boot makes every artifact of the verified boot chain:

  firmware db (vessel keys uefi) -> signed UKI (kernel + initrd + command line)
  -> initrd (vessel as /init, the manifest CA, the product ID)
  -> disk (EFI system partition + a data partition holding the signed manifest and its images)`,
	}
	for _, f := range bootCommands {
		c.AddCommand(f(g))
	}
	return c
}
