package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/build"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
)

func init() { addCommand(chrootCmd) }

func chrootCmd(g *globals) *cobra.Command {
	var (
		file, runtimeName string
		subs              []string
	)
	c := &cobra.Command{
		Use:   "chroot [-f vessel.yaml] [IMAGE [COMMAND [ARG...]]]",
		Short: "Run a shell or command in a build container of an image (stacker chroot)",
		Long: `Run COMMAND (default /bin/sh) in a build container of IMAGE, as stacker
chroot does: the image's root filesystem, mounted verified, with a writable
layer that is thrown away when the command exits; uid 0 in /, no network.

IMAGE is an image of the recipe (vessel.yaml, else stacker.yaml, or -f
FILE; default its first image), build_only ones included: it is built
first when the cache does not hold it (never tagged), and the container is
the one its run script gets: environment and build_env, STACKER_LAYER_NAME,
the host binds, and its imports at /stacker/imports (downloads and
stacker:// sources too). An IMAGE the recipe does not define is looked up
in the store and gets its own environment.

stdin is connected, and a terminal is given when stdin is one. The exit
code is the command's. The mount, the container and the staged imports are
removed however the command ends.`,
		Example: `  vessel chroot                          # /bin/sh in the recipe's first image
  vessel chroot app                      # /bin/sh in app, as its run script sees it
  vessel chroot -f stacker.yaml dev ls -l /stacker/imports
  vessel chroot base:latest cat /etc/os-release   # a store image`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if handled, err := g.enterUserNS(cmd); handled || err != nil {
				return err
			}
			sm := map[string]string{}
			for _, s := range subs {
				k, v, ok := strings.Cut(s, "=")
				if !ok || k == "" {
					return usageError{fmt.Sprintf("--substitute %q: want KEY=VALUE", s)}
				}
				sm[k] = v
			}
			if !cmd.Flags().Changed("file") {
				file = defaultRecipe()
			}
			rf, err := recipe.LoadFile(file, recipe.Options{Substitutions: sm})
			if err != nil {
				var re *recipe.Error
				if errors.As(err, &re) || !errors.Is(err, os.ErrNotExist) || cmd.Flags().Changed("file") {
					return err
				}
				rf = nil // no recipe here: IMAGE is a store image
			}
			f, epoch, s, err := g.layerWork(cmd, "squashfs", "")
			if err != nil {
				return err
			}
			co := build.ChrootOptions{Stdin: os.Stdin, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(), Terminal: ociruntime.IsTerminal(os.Stdin)}
			if len(args) > 0 {
				co.Image, co.Args = args[0], args[1:]
			}
			opt := build.Options{
				Store: s, Mounts: g.mounter(), Format: f, SourceDateEpoch: epoch, Output: cmd.ErrOrStderr(),
				Launcher: func() (*container.Launcher, error) { return g.launcher(cmd, runtimeName) },
				Registry: func(insecure bool) (*registry.Client, error) {
					return registry.New(registry.Options{PlainHTTP: insecure, Insecure: insecure})
				},
			}
			lp := &layerProgress{w: cmd.ErrOrStderr(), start: time.Now()} // plain lines: the command's output follows
			opt.Progress = func(e build.Event) {
				if e.Status != build.StatusCached {
					printBuildEvent(lp, e)
				}
			}
			runCtx, abort := context.WithCancel(context.WithoutCancel(cmd.Context()))
			defer abort()
			var started atomic.Bool
			co.Started = func() { started.Store(true) }
			stopper := stopOnSignals(abort, &started, 10*time.Second)
			defer stopper.close()
			code, err := build.Chroot(runCtx, rf, opt, co)
			if sig, killed := stopper.result(); killed {
				return exitError{code: 128 + int(sig)}
			}
			if err != nil {
				return execExitCode(err)
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.SetInterspersed(false) // flags after IMAGE belong to COMMAND
	fl.StringVarP(&file, "file", "f", "vessel.yaml", "the recipe (default vessel.yaml, else stacker.yaml)")
	fl.StringArrayVar(&subs, "substitute", nil, "set ${{KEY}} in the recipe: KEY=VALUE (repeatable)")
	fl.StringVar(&runtimeName, "runtime", "", "OCI runtime: runc, crun or a path (default: the first that works)")
	return c
}
