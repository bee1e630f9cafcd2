package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/build"
)

func init() { addCommand(cleanCmd) }

func cleanCmd(g *globals) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "clean [--all]",
		Short: "Remove what builds keep between runs (stacker clean)",
		Long: `Remove what vessel build keeps between runs, as stacker clean removes its
roots and cache: the build cache (build-cache.json: the next build runs every
script again), the docker bases pulled for builds (build-bases), temporary
downloads and the build directories a killed build left in the store's tmp
directory. Then the store is collected (vessel gc), freeing the blobs only
the cache kept: build_only images, earlier layers, untagged images.

--all also removes the downloads of http(s) imports and tar bases
(build-downloads): they are fetched again, and a build whose pinned files
were there no longer works offline. (stacker's --all is a no-op.)

Tagged images are never removed. clean waits for running builds and holds
new ones off while it removes; a build directory with a mount below it is
left in place and named (unmount it, or reboot, and clean again).`,
		Example: `  vessel clean
  vessel clean --all            # the downloads too
  vessel clean --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if handled, err := g.enterUserNS(cmd); handled || err != nil {
				return err
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			res, err := build.Clean(s, build.CleanOptions{All: all})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			for _, r := range res.Removed {
				fmt.Fprintf(w, "removed %s\n", r)
			}
			for _, r := range res.Skipped {
				warnf(cmd.ErrOrStderr(), "warning", "%s is still mounted: left in place (unmount it, or reboot, and clean again)", r)
			}
			fmt.Fprintf(w, "removed %d build files and directories (%s) and %d blobs (%s)\n",
				len(res.Removed), humanSize(res.Bytes), len(res.GC.Removed), humanSize(res.GC.Bytes))
			return nil
		},
	}
	c.Flags().BoolVar(&all, "all", false, "also remove the downloads cache (build-downloads)")
	return c
}
