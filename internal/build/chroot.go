package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/recipe"
)

// DefaultShell is what Chroot runs without Args (stacker's default).
const DefaultShell = "/bin/sh"

// ChrootOptions say what Chroot runs, and where.
type ChrootOptions struct {
	// Image is an image of the recipe (built first, cached as a build
	// is, never tagged: build_only images work too) or, when the recipe
	// does not define it (or there is no recipe), a store reference.
	// "" is the recipe's first image, as in stacker.
	Image string
	// Args is the command (default DefaultShell).
	Args []string
	// Stdin, Stdout and Stderr are the command's; Terminal gives it a
	// terminal (Stdin must be one).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Terminal       bool
	// Started, if set, is called when the command is about to start.
	Started func()
}

// ErrNoImage: Chroot was given neither an image nor a recipe.
var ErrNoImage = errors.New("no image to enter")

// Chroot runs a command in a build container of an image, as stacker
// chroot does: the image's root filesystem mounted verified with a
// writable layer that is thrown away when the command exits, as uid 0 in
// /, with no network. For an image of the recipe f (nil: none) the
// container is the one its run script gets: the build environment
// (environment, build_env, STACKER_LAYER_NAME), the host binds, and the
// imports at /stacker/imports (downloads and stacker:// sources
// included); the image is built first if the cache does not hold it.
// A store image gets its own environment.
//
// It returns the command's exit code. The mount, the container and the
// staged imports are removed on every path, failures and cancellation
// included.
func Chroot(ctx context.Context, f *recipe.File, opt Options, co ChrootOptions) (code int, err error) {
	if opt.Store == nil || opt.Mounts == nil || opt.Launcher == nil {
		return -1, errors.New("chroot: no store, mount manager or container runtime")
	}
	name := co.Image
	var img *recipe.Image
	var mi *mount.Image
	if f != nil {
		if name == "" && len(f.Images) > 0 {
			name = f.Images[0].Name
		}
		for _, file := range f.BuildOrder() {
			if im := file.Image(name); im != nil {
				img = im
			}
		}
	}
	if name == "" {
		return -1, fmt.Errorf("chroot: %w", ErrNoImage)
	}
	var built []Built
	if img != nil {
		o := opt
		o.Only = nil
		if f.Image(name) != nil {
			o.Only = []string{name}
		}
		res, err := build(ctx, f, o, false)
		if err != nil {
			return -1, fmt.Errorf("chroot %s: build it: %w", name, err)
		}
		built = res.Images
		for _, r := range res.Images {
			if r.Name == name {
				if mi, err = mount.LocalImage(opt.Store, r.Descriptor.Digest.String()); err != nil {
					return -1, fmt.Errorf("chroot %s: %w", name, err)
				}
			}
		}
		if mi == nil {
			return -1, fmt.Errorf("chroot %s: the build did not make it", name)
		}
	} else if mi, err = mount.LocalImage(opt.Store, name); err != nil {
		return -1, fmt.Errorf("chroot %s: not an image of the recipe, nor in the store: %w", name, err)
	}

	args := co.Args
	if len(args) == 0 {
		args = []string{DefaultShell}
	}
	cfg := ociruntime.Config{Args: args, Cwd: "/", User: "0:0", Network: ociruntime.NetworkNone, Terminal: co.Terminal}
	env := mi.Config().Config.Env
	if img != nil {
		tmp, err := opt.Store.TempDir("build-chroot-*")
		if err != nil {
			return -1, fmt.Errorf("chroot %s: %w", name, err)
		}
		defer func() {
			if rerr := os.RemoveAll(tmp); rerr != nil {
				err = errors.Join(err, fmt.Errorf("chroot %s: remove the staged imports: %w", name, rerr))
			}
		}()
		binds, err := chrootImports(ctx, img, filepath.Join(tmp, "stage"), opt, built)
		if err != nil {
			return -1, fmt.Errorf("chroot %s: %w", name, err)
		}
		cfg.Mounts = binds
		env = img.RunEnv(env)
	}
	cfg.Env = env
	if a := mi.Config().Architecture; a != "" {
		if err := binfmt.Check(a); err != nil { // a foreign image runs through qemu-user
			return -1, fmt.Errorf("chroot %s: %w", name, err)
		}
	}
	l, err := opt.Launcher()
	if err != nil {
		return -1, err
	}
	stdio := ociruntime.Stdio{Stdin: co.Stdin, Stdout: co.Stdout, Stderr: co.Stderr}
	return l.Run(ctx, container.Spec{ID: containerID("chroot-" + strings.ReplaceAll(name, "/", "-")), Image: mi, Config: cfg, Started: co.Started}, stdio)
}

// chrootImports stages img's imports without dest: at /stacker/imports,
// as in its build (http(s) ones from the downloads cache, stacker:// ones
// from the images built), and returns the container's binds: those and
// the host binds. The source images are unmounted before it returns.
func chrootImports(ctx context.Context, img *recipe.Image, dir string, opt Options, built []Built) (_ []ociruntime.Bind, err error) {
	staged := *img
	staged.Imports = nil
	staged.Run = nil // no script to stage
	for _, imp := range img.Imports {
		if imp.Dest == "" { // those with dest: are in the image already
			staged.Imports = append(staged.Imports, imp)
		}
	}
	b := &builder{opt: opt, s: opt.Store, done: map[string]*Built{}, fetch: newFetcher(opt.Store.Root(), opt.HTTPClient)}
	for i := range built {
		b.done[built[i].Name] = &built[i]
	}
	src := &sources{b: b, ctx: ctx}
	defer func() {
		err = errors.Join(err, src.close(), b.fetch.close())
	}()
	for _, imp := range staged.Imports {
		if imp.Remote() {
			if _, err := b.fetch.fetch(ctx, imp); err != nil {
				return nil, fmt.Errorf("%s: %w", imp.Source, err)
			}
		}
	}
	mtime := time.Unix(0, 0)
	if opt.SourceDateEpoch != nil {
		mtime = time.Unix(*opt.SourceDateEpoch, 0)
	}
	st, err := recipe.Stage(&staged, dir, recipe.StageOptions{Resolve: src.resolve, MTime: mtime})
	if err != nil {
		return nil, err
	}
	for _, c := range st.Chowns {
		if err := os.Lchown(c.HostPath, c.UID, c.GID); err != nil {
			return nil, fmt.Errorf("chown %s: %w", c.ContainerPath, err)
		}
	}
	var binds []ociruntime.Bind
	for _, m := range st.Mounts {
		binds = append(binds, ociruntime.Bind{Source: m.Source, Target: m.Destination, ReadOnly: m.ReadOnly})
	}
	for _, hb := range img.Binds {
		binds = append(binds, ociruntime.Bind{Source: hb.Source, Target: hb.Dest})
	}
	return binds, nil
}
