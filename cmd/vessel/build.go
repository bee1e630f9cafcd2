package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/build"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
)

func init() { addCommand(buildCmd) }

func buildCmd(g *globals) *cobra.Command {
	var (
		file, runtimeName, subFile, annNS string
		arch                              string
		subs, only, layerTypes            []string
		noCache, requireHash, orderOnly   bool
	)
	c := &cobra.Command{
		Use:   "build [-f vessel.yaml] [--arch ARCH[,ARCH...]] [--substitute KEY=VAL]... [--only NAME]...",
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
tar, oci and docker bases are converted to verified layers once.

Images are tagged NAME:latest in the store only after every image of their
file built (build_only images are never tagged): a failure keeps the
previous tags of the failing file, while prerequisites that completed are
already tagged. With SOURCE_DATE_EPOCH set, the same
recipe gives the same image digests on any clean store.

Other architectures: --arch arm64 (or arch: in the recipe) builds for
arm64; run scripts execute through qemu-user (vessel binfmt install), and
oci and docker bases are picked for the platform from multi-arch indexes.
--arch amd64,arm64 builds the recipe once per architecture and tags each
image as one multi-arch OCI index. See docs/build.md and docs/binfmt.md.`,
		Example: `  vessel build                                   # ./vessel.yaml
  vessel build -f examples/vessel.yaml
  vessel build -f examples/vessel.yaml --substitute BUSYBOX=/usr/bin/busybox
  vessel build --only app --layer-type erofs
  vessel build --arch arm64                      # needs: vessel binfmt install
  vessel build --arch amd64,arm64                # one multi-arch index per image
  vessel build --require-hash                    # every http(s) import pinned by hash:
  vessel build --order-only                      # the build order, nothing built
  vessel build --substitute-file subs.yaml       # stacker's KEY: VALUE file
  SOURCE_DATE_EPOCH=1700000000 vessel build --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkEmulationOutside(arch); err != nil {
				return err
			}
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
			var arches []string
			if arch != "" {
				ps, err := platform.ParseList(arch)
				if err != nil {
					return usageError{fmt.Sprintf("--arch: %v", err)}
				}
				for _, p := range ps {
					arches = append(arches, p.Architecture)
				}
			}
			if !cmd.Flags().Changed("file") {
				file = defaultRecipe()
			}
			load := func(a string) (*recipe.File, error) {
				rf, err := recipe.LoadFile(file, recipe.Options{Substitutions: sm, Arch: a})
				if err != nil {
					var re *recipe.Error
					if errors.Is(err, os.ErrNotExist) && !errors.As(err, &re) && !cmd.Flags().Changed("file") {
						return nil, fmt.Errorf("%w (give the recipe with -f FILE)", err)
					}
					return nil, err
				}
				return rf, nil
			}
			if len(arches) == 1 {
				arch = arches[0]
			}
			stderr := cmd.ErrOrStderr()
			if orderOnly || len(arches) <= 1 {
				rf, err := load(arch)
				if err != nil {
					return err
				}
				if orderOnly {
					order, err := build.Order(rf, only)
					if err != nil {
						return err
					}
					return printOrder(cmd, g.json, order)
				}
				for _, rfile := range rf.BuildOrder() {
					for _, w := range rfile.Warnings {
						fmt.Fprintf(stderr, "vessel: warning: %v\n", w)
					}
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
				// Steps, and the layer step's bytes as "progress" events
				// (paced by the layer code, about 4 a second).
				emit := jsonEvents(cmd.OutOrStdout())
				var making atomic.Value // the image whose layer is being made
				making.Store("")
				opt.Progress = func(e build.Event) {
					if e.Status == build.StatusLayer {
						making.Store(e.Image)
					}
					emit(struct {
						Kind string `json:"event"`
						build.Event
					}{"step", e})
				}
				opt.Written = func(n int64) { emit(layerProgressEvent{"progress", making.Load().(string), "written", n, 0}) }
				opt.Hashed = func(done, total int64) {
					emit(layerProgressEvent{"progress", making.Load().(string), "hashed", done, total})
				}
			} else {
				// On a terminal, a live line shows the layer step's bytes.
				lp := newLayerProgress(cmd, g)
				lp.start = start
				var making atomic.Value // the image whose layer is being made
				making.Store("")
				opt.Progress = func(e build.Event) {
					if e.Status == build.StatusLayer {
						making.Store(e.Image)
					}
					printBuildEvent(lp, e)
				}
				opt.Written = func(n int64) { lp.draw(making.Load().(string), n, 0, "written") }
				opt.Hashed = func(done, total int64) { lp.hashed(making.Load().(string), done, total) }
				defer lp.done()
			}
			var res *build.Result
			if len(arches) > 1 {
				res, err = build.BuildPlatforms(cmd.Context(), arches, load, opt)
			} else if rf, lerr := load(arch); lerr != nil {
				return lerr
			} else {
				res, err = build.Build(cmd.Context(), rf, opt)
			}
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
				if len(arches) > 1 {
					from = " (" + im.Platform + ")" + from
				}
				fmt.Fprintf(w, "%s %s%s\n", ref, im.Descriptor.Digest, from)
			}
			for _, ix := range res.Indexes {
				fmt.Fprintf(w, "%s %s (index: %s)\n", ix.Ref, ix.Descriptor.Digest, strings.Join(ix.Platforms, ", "))
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
	fl.StringVar(&arch, "arch", "", "build for ARCH (arm64, amd64...); a comma list builds one multi-arch index per image (default: arch: in the recipe, else this machine's)")
	fl.StringVar(&runtimeName, "runtime", "", "OCI runtime: runc, crun or a path (default: the first that works)")
	return c
}

// layerProgressEvent is a --json event of a build's layer step: the bytes
// the filesystem tool has written, then the bytes hashed (digest and
// dm-verity tree) of total.
type layerProgressEvent struct {
	Event string `json:"event"`
	Image string `json:"image"`
	Phase string `json:"phase"`
	Bytes int64  `json:"bytes"`
	Total int64  `json:"total,omitempty"`
}

// printOrder writes --order-only's answer: one line per image, or JSON.
func printOrder(cmd *cobra.Command, asJSON bool, order []build.Planned) error {
	w := cmd.OutOrStdout()
	if asJSON {
		return json.NewEncoder(w).Encode(jsonValue(struct {
			Order []build.Planned `json:"order"`
		}{order}))
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

// printBuildEvent writes one progress line to stderr (ending a live
// line first).
func printBuildEvent(lp *layerProgress, e build.Event) {
	name := e.Image
	if e.File != "" {
		name += " (" + e.File + ")"
	}
	what := e.Message
	switch e.Status {
	case build.StatusCached:
		what = "cached " + shortDigest(e.Digest.String())
	case build.StatusBuilt:
		what = "built " + shortDigest(e.Digest.String())
	case build.StatusRun:
		what = "run"
	case build.StatusLayer:
		what = "making the layer"
	case build.StatusReuse:
		what = "layer cached, new config"
	case build.StatusTagged:
		what = "tagged " + e.Message
	}
	lp.printf("[%5.1fs] [%d/%d] %s: %s\n", time.Since(lp.start).Seconds(), e.Step, e.Steps, name, what)
}
