package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/build"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
)

func init() { addCommand(buildCmd) }

func buildCmd(g *globals) *cobra.Command {
	var (
		file, runtimeName, subFile, annNS string
		subs, only, layerTypes            []string
		noCache, requireHash, orderOnly   bool
	)
	c := &cobra.Command{
		Use:   "build [-f vessel.yaml] [--substitute KEY=VAL]... [--only NAME]...",
		Short: "Build the images of a vessel.yaml (stacker.yaml) recipe into the store",
		Long: `Build every image of a recipe (vessel.yaml in the current directory, or -f
FILE), in dependency order, into verified images in the store. The recipe
format is project-stacker's stacker.yaml: from (scratch, tar, oci, docker,
built), imports, run, environment, labels, annotations, entrypoint, cmd,
full_command, working_dir, volumes, build_only, arch and ${{VAR:default}}
substitutions (--substitute VAR=VALUE).

A top-level config: {prerequisites: [other.yaml, ...]} names recipe files
(relative to the recipe's directory) that are built first, whole and
recursively, each once; their images can be the recipe's built bases and
stacker:// sources. --substitute applies to every file, --only to the
named recipe alone. Progress names the file of a prerequisite's images.

Each image's run script executes in a container (runc or crun) whose root
is the base image mounted verified with a writable layer on top; imports
are at /stacker/imports (also /vessel/imports). The container has no
network and the runtime's default capabilities. What run and the dest:
imports changed, deletions included (as overlay whiteouts), becomes one new
squashfs (or erofs) layer with a dm-verity tree. Script output streams as
it runs; a failing step stops the build and names the image, the step, the
exit code and the last lines of output.

Layers are cached (<root>/build-cache.json): an image whose base, script,
environment and import contents are unchanged is not run again, and
rebuilding an unchanged recipe starts no container ("cached"). Changing one
image rebuilds it and the images built on it. --no-cache rebuilds all.
tar, oci and docker bases are converted to verified layers once; their
layers that already are verified squashfs/erofs are reused as they are.
http(s) imports are downloaded on the host into <root>/build-downloads,
revalidated by ETag/Last-Modified or found by their hash: without a
request; --require-hash refuses those without hash:. binds mount host
paths into the build container; overlay_dirs add host directories.

Images are tagged NAME:latest in the store only after every image of their
file built (build_only images are never tagged): a failure keeps the
previous tags of the failing file, while prerequisites that completed are
already tagged. With SOURCE_DATE_EPOCH set, the same
recipe gives the same image digests on any clean store. See docs/build.md.`,
		Example: `  vessel build                                   # ./vessel.yaml
  vessel build -f examples/vessel.yaml
  vessel build -f examples/vessel.yaml --substitute BUSYBOX=/usr/bin/busybox
  vessel build --only app --layer-type erofs
  vessel build --require-hash                    # every http(s) import pinned by hash:
  vessel build --order-only                      # the build order, nothing built
  vessel build --substitute-file subs.yaml       # stacker's KEY: VALUE file
  SOURCE_DATE_EPOCH=1700000000 vessel build --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if handled, err := g.enterUserNS(cmd); handled || err != nil {
				return err
			}
			layerType, err := oneLayerType(layerTypes)
			if err != nil {
				return err
			}
			sm := map[string]string{}
			if subFile != "" {
				if sm, err = recipe.ReadSubstituteFile(subFile); err != nil {
					return err
				}
			}
			for _, s := range subs {
				k, v, ok := strings.Cut(s, "=")
				if !ok || k == "" {
					return usageError{fmt.Sprintf("--substitute %q: want KEY=VALUE", s)}
				}
				sm[k] = v
			}
			f, epoch, s, err := g.layerWork(cmd, layerType, "")
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("file") {
				file = defaultRecipe()
			}
			rf, err := recipe.LoadFile(file, recipe.Options{Substitutions: sm})
			if err != nil {
				var re *recipe.Error
				if errors.Is(err, os.ErrNotExist) && !errors.As(err, &re) && !cmd.Flags().Changed("file") {
					return fmt.Errorf("%w (give the recipe with -f FILE)", err)
				}
				return err
			}
			if orderOnly {
				order, err := build.Order(rf, only)
				if err != nil {
					return err
				}
				return printOrder(cmd, g.json, order)
			}
			stderr := cmd.ErrOrStderr()
			for _, rfile := range rf.BuildOrder() {
				for _, w := range rfile.Warnings {
					fmt.Fprintf(stderr, "vessel: warning: %v\n", w)
				}
			}
			opt := build.Options{
				Store: s, Mounts: g.mounter(), Format: f, SourceDateEpoch: epoch,
				NoCache: noCache, RequireHash: requireHash, Only: only, Output: stderr, AnnotationsNamespace: annNS,
				Launcher: func() (*container.Launcher, error) { return g.launcher(cmd, runtimeName) },
				Registry: func(insecure bool) (*registry.Client, error) {
					return registry.New(registry.Options{PlainHTTP: insecure, Insecure: insecure})
				},
			}
			start := time.Now()
			if g.json {
				emit := jsonEvents(cmd.OutOrStdout())
				opt.Progress = func(e build.Event) {
					emit(struct {
						Kind string `json:"event"`
						build.Event
					}{"step", e})
				}
			} else {
				opt.Progress = func(e build.Event) { printBuildEvent(cmd, start, e) }
			}
			res, err := build.Build(cmd.Context(), rf, opt)
			if err != nil {
				return err
			}
			if g.json {
				return printResultEvent(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			for _, im := range res.Images {
				ref := im.Ref
				if ref == "" {
					ref = im.Name + " (build_only, not tagged)"
				}
				from := ""
				if im.File != "" {
					from = " (prerequisite " + im.File + ")"
				}
				fmt.Fprintf(w, "%s %s%s\n", ref, im.Descriptor.Digest, from)
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVarP(&file, "file", "f", "vessel.yaml", "the recipe (default vessel.yaml, else stacker.yaml)")
	fl.StringArrayVar(&subs, "substitute", nil, "set ${{KEY}} in the recipe: KEY=VALUE (repeatable)")
	fl.BoolVar(&noCache, "no-cache", false, "ignore and reset the build cache: rebuild every image")
	fl.BoolVar(&orderOnly, "order-only", false, "print the order the images would be built in, and build nothing")
	fl.BoolVar(&requireHash, "require-hash", false, "refuse http(s) imports without hash: (reproducible builds)")
	fl.StringArrayVar(&layerTypes, "layer-type", nil, "layer filesystem: squashfs (default) or erofs; one per build")
	fl.StringVar(&annNS, "annotations-namespace", build.DefaultAnnotationsNamespace, "prefix of the stacker annotations on each manifest (NS.stacker.stacker_yaml, NS.stacker.git_version)")
	fl.StringVar(&subFile, "substitute-file", "", "a YAML file of KEY: VALUE substitutions (--substitute wins)")
	fl.StringArrayVar(&only, "only", nil, "build only this image and what it needs (repeatable)")
	fl.StringVar(&runtimeName, "runtime", "", "OCI runtime: runc, crun or a path (default: the first that works)")
	return c
}

// printOrder writes --order-only's answer: one line per image, or JSON.
func printOrder(cmd *cobra.Command, asJSON bool, order []build.Planned) error {
	w := cmd.OutOrStdout()
	if asJSON {
		if order == nil {
			order = []build.Planned{}
		}
		return json.NewEncoder(w).Encode(struct {
			Order []build.Planned `json:"order"`
		}{order})
	}
	for _, p := range order {
		line := fmt.Sprintf("%d %s", p.Step, p.Image)
		if p.BuildOnly {
			line += " (build_only)"
		}
		if p.File != "" {
			line += " (prerequisite " + p.File + ")"
		}
		fmt.Fprintln(w, line)
	}
	return nil
}

// defaultRecipe is the recipe vessel build reads without -f: vessel.yaml,
// or stacker.yaml when only that exists (a stacker project as it is).
func defaultRecipe() string {
	if _, err := os.Stat("vessel.yaml"); err != nil {
		if _, err := os.Stat("stacker.yaml"); err == nil {
			return "stacker.yaml"
		}
	}
	return "vessel.yaml"
}

// oneLayerType checks --layer-type: stacker builds one image per layer
// type given; vessel builds one layer type per run and says so instead of
// keeping the last value silently. tar output is refused: vessel layers
// are verified filesystem images.
func oneLayerType(types []string) (string, error) {
	for _, t := range types {
		if t == "tar" {
			return "", usageError{"--layer-type tar: vessel builds verified squashfs or erofs layers only; tar layers (for docker or podman) are not supported"}
		}
	}
	switch len(types) {
	case 0:
		return "squashfs", nil
	case 1:
		return types[0], nil
	}
	return "", usageError{fmt.Sprintf("--layer-type given %d times (%s): vessel builds one layer type per run; run vessel build once per type", len(types), strings.Join(types, ", "))}
}

// printBuildEvent writes one progress line to stderr.
func printBuildEvent(cmd *cobra.Command, start time.Time, e build.Event) {
	w := cmd.ErrOrStderr()
	name := e.Image
	if e.File != "" {
		name += " (" + e.File + ")"
	}
	pre := fmt.Sprintf("[%5.1fs] [%d/%d] %s:", time.Since(start).Seconds(), e.Step, e.Steps, name)
	switch e.Status {
	case build.StatusCached:
		fmt.Fprintf(w, "%s cached %s\n", pre, shortDigest(e.Digest.String()))
	case build.StatusBuilt:
		fmt.Fprintf(w, "%s built %s\n", pre, shortDigest(e.Digest.String()))
	case build.StatusRun:
		fmt.Fprintf(w, "%s run\n", pre)
	case build.StatusLayer:
		fmt.Fprintf(w, "%s making the layer\n", pre)
	case build.StatusReuse:
		fmt.Fprintf(w, "%s layer cached, new config\n", pre)
	case build.StatusTagged:
		fmt.Fprintf(w, "%s tagged %s\n", pre, e.Message)
	default:
		fmt.Fprintf(w, "%s %s\n", pre, e.Message)
	}
}
