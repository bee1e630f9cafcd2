package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/userns"
)

func init() {
	addCommand(mountCmd)
	addCommand(umountCmd)
	addCommand(unshareCmd)
}

func (g *globals) mounter() *mount.Manager { return &mount.Manager{Run: g.runDir()} }

func mountCmd(g *globals) *cobra.Command {
	var opt mount.Options
	var dryRun bool
	c := &cobra.Command{
		Use:   "mount [IMAGE DIR]",
		Short: "Mount an image read-only (or writable) without extracting it",
		Long: `Mount IMAGE from the store at DIR. Nothing is extracted: each layer blob
is attached read-only, checked against the dm-verity root hash in the image
manifest and mounted as squashfs or erofs; the layers are stacked with
overlayfs. With --writable a fresh, empty upper layer takes the writes
(it is thrown away by umount unless --upper names a directory to keep).

With device-mapper, the kernel checks every block as it is read (dm-verity).
Without it, vessel verifies each layer in userspace before its first mount
and remembers the result until reboot, keyed by the blob's digest and file
identity. A layer that fails is never mounted.

Layers are shared: mounting images that have layers in common mounts each
layer once. Without arguments, lists what vessel has mounted.

Rootless, mounts live in vessel's user namespace, which ends with the
command that made it: mount inside 'vessel unshare' (layers are verified
in userspace and mounted with squashfuse).`,
		Example: `  vessel mount app:1 /mnt/app
  vessel mount --writable app:1 /tmp/scratch
  vessel mount --dry-run --json app:1 /mnt/app   # print the mount plan
  vessel umount /mnt/app
  vessel unshare sh -c 'vessel mount app:1 /tmp/app && ls /tmp/app'   # rootless`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 && len(args) != 2 {
				return usageError{"mount takes IMAGE and DIR, or nothing to list mounts"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 && !dryRun && userns.Needed() {
				return errors.New("mount as an unprivileged user: the mount would live in a user namespace that ends when vessel exits; " +
					"mount inside 'vessel unshare' (for example: vessel unshare sh -c 'vessel mount IMAGE DIR && ls DIR'), or use vessel run")
			}
			if handled, err := g.enterUserNS(cmd); handled {
				return err
			}
			m := g.mounter()
			if len(args) == 0 {
				return listMounts(g, cmd, m)
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			img, err := mount.LocalImage(s, args[0])
			if err != nil {
				return err
			}
			target, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			if opt.Upper != "" {
				opt.Writable = true
				if opt.Upper, err = filepath.Abs(opt.Upper); err != nil {
					return err
				}
			}
			id := fmt.Sprintf("mount-%x", sha256.Sum256([]byte(target)))[:18]
			var p *mount.Plan
			if dryRun {
				p, err = m.Plan(img, id, target, opt)
			} else {
				p, err = m.Mount(cmd.Context(), img, id, target, mount.Owner{}, opt)
			}
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			if dryRun {
				printPlan(cmd, p)
				return nil
			}
			st := m.Stats()
			fmt.Fprintf(cmd.OutOrStdout(), "mounted %s (%s) at %s: %d layers (%s; %d verified now, %d verified earlier this boot, %d shared)\n",
				args[0], shortDigest(p.Digest), p.Target, len(p.Layers), p.Mode, st.Verified, st.CacheHits, st.LayersShared)
			return nil
		},
	}
	c.Flags().BoolVarP(&opt.Writable, "writable", "w", false, "add a fresh writable upper layer")
	c.Flags().StringVar(&opt.Upper, "upper", "", "keep the writes in this directory (implies --writable)")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "print the mount plan without mounting")
	return c
}

func printPlan(cmd *cobra.Command, p *mount.Plan) {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "image %s (%s), mode %s\n", p.Image, shortDigest(p.Digest), p.Mode)
	for i, l := range p.Layers {
		fmt.Fprintf(w, "layer %d: %s\n", i+1, l.Digest)
		if l.Mount.Source != l.Blob {
			fmt.Fprintf(w, "  loop    %s (first %d bytes, read-only)\n", l.Loop.File, l.Loop.SizeLimit)
		}
		if l.Verity != nil {
			fmt.Fprintf(w, "  verity  %s: %s\n", l.Verity.Name, l.Verity.Table(mount.LoopDevice))
		}
		if l.VerifyInUserspace {
			fmt.Fprintf(w, "  verify  in userspace before the first mount this boot\n")
		}
		fmt.Fprintf(w, "  mount   %s %s on %s\n", l.Mount.Type, l.Mount.Source, l.Mount.Target)
	}
	fmt.Fprintf(w, "mount   %s on %s (%v)\n", p.Overlay.Type, p.Overlay.Target, p.Overlay.Options)
}

func listMounts(g *globals, cmd *cobra.Command, m *mount.Manager) error {
	plans, owners, err := m.Mounted()
	if err != nil {
		return err
	}
	if g.json {
		type row struct {
			*mount.Plan
			Owner mount.Owner `json:"owner"`
		}
		rows := []row{}
		for i, p := range plans {
			rows = append(rows, row{p, owners[i]})
		}
		return printJSON(cmd.OutOrStdout(), rows)
	}
	for _, p := range plans {
		fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\t%d layers\n", p.Target, p.Image, shortDigest(p.Digest), len(p.Layers))
	}
	return nil
}

func umountCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "umount DIR",
		Example: `  vessel mount demo:1 /mnt/demo
  vessel umount /mnt/demo`,
		Short: "Unmount an image mounted with vessel mount",
		Long: `Unmount the image vessel mounted at DIR, release its layers (a layer that
no other mount uses is unmounted and its loop device freed) and delete the
fresh upper layer, if any.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if handled, err := g.enterUserNS(cmd); handled {
				return err
			}
			return g.mounter().UnmountTarget(args[0])
		},
	}
}

func unshareCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "unshare [COMMAND [ARG...]]",
		Short: "Run a command (default: a shell) in vessel's rootless user namespace",
		Long: `Run COMMAND (default $SHELL, or /bin/sh) as root in the user namespace
vessel uses rootless: the user's own uid and gid are 0 there and the
subordinate ids from /etc/subuid and /etc/subgid are mapped from 1 up (see
docs/rootless.md). vessel commands run inside share it, so 'vessel mount'
works there, and the namespace, with everything mounted in it, ends when
COMMAND exits. As root, COMMAND simply runs.`,
		Example: `  vessel unshare id
  vessel unshare sh -c 'vessel mount app:1 /tmp/app && ls -ln /tmp/app'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if handled, err := g.enterUserNS(cmd); handled {
				return err
			}
			if len(args) == 0 {
				sh := os.Getenv("SHELL")
				if sh == "" {
					sh = "/bin/sh"
				}
				args = []string{sh}
			}
			code, err := userns.RunReaping(args)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
	c.Flags().SetInterspersed(false)
	return c
}
