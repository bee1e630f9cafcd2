package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func init() { addCommand(tagCmd) }

func tagCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tag SOURCE TARGET...",
		Short: "Give an image in the store more names (NAME[:TAG])",
		Long: `Tag the image SOURCE (NAME[:TAG] or NAME@sha256:...) with each TARGET, as
podman tag does. No data is copied: the targets name the same manifest,
so the digest stays the same. An existing TARGET is moved to the image.`,
		Example: `  vessel tag app:latest app:1.0
  vessel tag app registry.example.com/acme/app:1.0
  vessel rmi app:1.0`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			desc, err := s.Resolve(args[0])
			if err != nil {
				return fmt.Errorf("tag: %w", err)
			}
			for _, t := range args[1:] {
				if err := s.Tag(t, desc); err != nil {
					return fmt.Errorf("tag %s: %w", t, err)
				}
				if !g.json {
					fmt.Fprintf(cmd.OutOrStdout(), "tagged %s as %s (%s)\n", args[0], t, desc.Digest)
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"source": args[0], "targets": args[1:], "digest": desc.Digest})
			}
			return nil
		},
	}
}
