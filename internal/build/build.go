// Package build executes vessel.yaml recipes: it turns each image of a
// recipe.Plan into a verified image in the store.
//
// For every step it resolves the base (an empty root for scratch, the
// result of an earlier step for built, a tarball, OCI layout or registry
// image converted once to verified layers and cached), computes the step's
// cache keys (recipe.Key) and then does the least work the cache allows:
//
//   - config key hit: the image manifest built before is reused as is;
//   - layer key hit: only a new config and manifest are written;
//   - miss: the imports are staged (recipe.Stage), the base is mounted
//     verified with a writable upper directory, the run script executes in
//     a container (container.Launcher, the one container runner, with no
//     network and the default capabilities), and the upper directory, with
//     deletions as overlay whiteouts, becomes one new verified layer.
//
// Images are tagged only after every step of their file succeeded, so a
// failed build leaves the previous tags of that file as they were; what did
// succeed stays in the build cache and is reused by the next build.
// Prerequisite files (config: prerequisites:) are built first, whole, and
// tagged as each completes. Callers (cmd/vessel) read the recipe with
// recipe.LoadFile and call Build; recipe parsing, cache keys and staging
// live in package recipe, mounts in package mount.
package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
)

// Options control Build.
type Options struct {
	Store  *store.Store
	Mounts *mount.Manager
	// Launcher returns the container runner; it is called only when a step
	// has a script to run, so a fully cached build never probes a runtime.
	Launcher func() (*container.Launcher, error)
	// Registry returns a client for docker bases (nil: docker bases fail).
	Registry func(insecure bool) (*registry.Client, error)
	// Format of the new layers (and of converted bases).
	Format layer.Format
	// SourceDateEpoch makes builds reproducible: file times are clamped to
	// it and configs carry it as their creation time.
	SourceDateEpoch *int64
	// NoCache empties the build cache first, so everything is rebuilt.
	NoCache bool
	// RequireHash refuses http(s) imports without hash: (stacker's
	// --require-hash), before anything is built.
	RequireHash bool
	// AnnotationsNamespace prefixes the annotations stacker writes on
	// every image manifest (NS.stacker.stacker_yaml: the recipe as
	// written, before substitution; NS.stacker.git_version: `git describe`
	// of the recipe's directory, when it is in a git work tree). Default
	// "io.stackeroci", stacker's --annotations-namespace default.
	AnnotationsNamespace string
	// HTTPClient downloads http(s) imports (nil: a default client that
	// honours the proxy environment).
	HTTPClient *http.Client
	// Only narrows the build to these images and what they need.
	Only []string
	// Output receives the run scripts' stdout and stderr as they run
	// (nil: discarded, but the tail still goes into errors).
	Output io.Writer
	// Progress, if set, is told about each step.
	Progress func(Event)
	// Written and Hashed, if set, report the layer being made (after a
	// StatusLayer event): the bytes of filesystem image written so far,
	// then the hashing of it (see layer.BuildOptions).
	Written func(n int64)
	Hashed  func(done, total int64)
}

// Event is one thing a build did.
type Event struct {
	Image  string `json:"image"`
	Step   int    `json:"step"`  // 1-based
	Steps  int    `json:"steps"` // steps in the plan
	Status string `json:"status"`
	// Digest is the image manifest digest for "cached" and "built".
	Digest  digest.Digest `json:"digest,omitempty"`
	Message string        `json:"message,omitempty"`
	// File is the recipe that defines the image when it is a prerequisite
	// of the recipe being built; "" for the recipe's own images.
	File string `json:"file,omitempty"`
}

// Event statuses.
const (
	StatusBase    = "base"    // resolving or converting the base image
	StatusRun     = "run"     // the run script is starting
	StatusLayer   = "layer"   // building the new layer
	StatusReuse   = "reuse"   // the layer is cached: only the config is new
	StatusCached  = "cached"  // the whole image is cached: no work
	StatusBuilt   = "built"   // the image is complete (tagged at the end)
	StatusTagged  = "tagged"  // the image was tagged
	StatusMessage = "message" // informational
)

// Result is what a build produced, in build order.
type Result struct {
	Images []Built `json:"images"`
	// Indexes are the multi-platform images of BuildPlatforms.
	Indexes []Index `json:"indexes,omitempty"`
}

// Built is one image of a build.
type Built struct {
	Name string `json:"name"`
	// Ref is the tag in the store ("name:latest"); empty for build_only.
	Ref        string             `json:"ref,omitempty"`
	Descriptor ocispec.Descriptor `json:"descriptor"`
	Layers     int                `json:"layers"`
	// Cache is "image" when the whole image came from the cache, "layer"
	// when only the config and manifest were written, "" when built.
	Cache string `json:"cache,omitempty"`
	// File is the prerequisite recipe that defines the image; "" for the
	// images of the recipe being built.
	File string `json:"file,omitempty"`
	// Platform is what the image runs on (os/arch[/variant]).
	Platform string `json:"platform"`
}

// Build builds the images of f (all, or opt.Only and what they need) in
// dependency order and tags them once all of them succeeded. A step that fails
// stops the build with a *StepError.
//
// A recipe with prerequisites (config: prerequisites:, read with
// recipe.LoadFile) builds every prerequisite file first, whole, each once,
// in File.BuildOrder; opt.Only applies to f alone. Each file's images are
// tagged as soon as that file's images are all built, so a failure later
// in the build keeps the tags of the prerequisites built before it.
func Build(ctx context.Context, f *recipe.File, opt Options) (*Result, error) {
	return build(ctx, f, opt, true)
}

// build is Build; tag false leaves the store's tags alone (BuildPlatforms
// tags indexes instead) but still fills Built.Ref.
func build(ctx context.Context, f *recipe.File, opt Options, tag bool) (_ *Result, err error) {
	if opt.Store == nil || opt.Mounts == nil {
		return nil, errors.New("build: no store or mount manager")
	}
	if opt.Format.Type == "" {
		opt.Format = layer.DefaultFormat(layer.Squashfs)
	}
	if opt.Output == nil {
		opt.Output = io.Discard
	}
	if opt.AnnotationsNamespace == "" {
		opt.AnnotationsNamespace = DefaultAnnotationsNamespace
	}
	files := f.BuildOrder()
	plans := make([]*recipe.Plan, len(files))
	total := 0
	for i, file := range files {
		if len(file.PrerequisiteFiles) != len(file.Prerequisites) {
			return nil, fmt.Errorf("%s lists prerequisites (%s) that were not read: parse it with recipe.LoadFile", file.Path, file.Prerequisites[0])
		}
		var only []string
		if file == f {
			only = opt.Only
		}
		plan, err := file.Plan(only...)
		if err != nil {
			return nil, err
		}
		plans[i] = plan
		total += len(plan.Steps)
	}
	if opt.RequireHash {
		if err := requireHashes(files); err != nil {
			return nil, err
		}
	}
	b := &builder{opt: opt, s: opt.Store, cache: recipe.OpenCache(opt.Store.Root()), top: f, total: total, done: map[string]*Built{}, tag: tag,
		fetch: newFetcher(opt.Store.Root(), opt.HTTPClient)}
	b.cache.Note = func(msg string) { b.event(b.cur, StatusMessage, "", msg) }
	defer func() {
		if cerr := b.fetch.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if opt.SourceDateEpoch != nil {
		b.sde = strconv.FormatInt(*opt.SourceDateEpoch, 10)
	}
	if opt.NoCache {
		if err := b.cache.Reset(); err != nil {
			return nil, err
		}
	}
	done, err := b.s.Writer() // keeps gc away from blobs not yet tagged
	if err != nil {
		return nil, err
	}
	defer done()
	res := &Result{}
	for _, plan := range plans {
		imgs, err := b.buildPlan(ctx, plan)
		if err != nil {
			return nil, err
		}
		res.Images = append(res.Images, imgs...)
	}
	return res, nil
}

// buildPlan builds the steps of one file and tags its images.
func (b *builder) buildPlan(ctx context.Context, plan *recipe.Plan) ([]Built, error) {
	b.plan = plan
	b.gitVersion = gitVersion(ctx, plan.File.Dir)
	defer func() { b.offset += len(plan.Steps) }()
	var out []Built
	for i, step := range plan.Steps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b.cur = i
		r, err := b.step(ctx, i, step)
		if err != nil {
			return nil, err
		}
		r.File = b.prereq()
		b.done[step.Image.Name] = r
		out = append(out, *r)
	}
	for i, step := range plan.Steps {
		if !step.Tag {
			continue
		}
		r := &out[i]
		name, tag, err := store.ParseRef(step.Image.Name)
		if err != nil {
			return nil, fmt.Errorf("tag image %q: %w", step.Image.Name, err)
		}
		r.Ref = name + ":" + tag
		if !b.tag {
			continue
		}
		if err := b.s.Tag(r.Ref, r.Descriptor); err != nil {
			return nil, fmt.Errorf("tag %s: %w", r.Ref, err)
		}
		b.event(i, StatusTagged, r.Descriptor.Digest, r.Ref)
	}
	return out, nil
}

type builder struct {
	opt   Options
	s     *store.Store
	cache *recipe.Cache
	top   *recipe.File // the file Build was given
	plan  *recipe.Plan // the file being built
	// offset is the number of steps of the files built before plan's,
	// total the steps of the whole build.
	offset, total int
	sde           string
	done          map[string]*Built // every image built so far, of every file
	tag           bool              // tag the images (not when BuildPlatforms does)
	lnch          *container.Launcher
	fetch         *fetcher // http(s) imports
	cur           int      // the step being built, for notes
	gitVersion    string   // of the file being built ("": none)
}

// prereq is the path of the file being built when it is a prerequisite,
// "" when it is the top file.
func (b *builder) prereq() string {
	if b.plan.File == b.top {
		return ""
	}
	return b.plan.File.Path
}

func (b *builder) event(i int, status string, d digest.Digest, msg string) {
	if b.opt.Progress == nil {
		return
	}
	b.opt.Progress(Event{Image: b.plan.Steps[i].Image.Name, Step: b.offset + i + 1, Steps: b.total, Status: status, Digest: d, Message: msg, File: b.prereq()})
}

// stepError is a failure of step i of the current plan.
func (b *builder) stepError(i int, img *recipe.Image, phase string, line int, err error) *StepError {
	return &StepError{Image: img.Name, Step: b.offset + i + 1, Steps: b.total, Phase: phase, File: b.plan.File.Path,
		Prerequisite: b.prereq() != "", Line: line, ExitCode: -1, Err: err}
}

func (b *builder) created() time.Time {
	if b.opt.SourceDateEpoch != nil {
		return time.Unix(*b.opt.SourceDateEpoch, 0).UTC()
	}
	return time.Now().UTC().Truncate(time.Second)
}

// changesFiles reports whether img adds a layer on top of its base: a run
// script or imports that land in the image. An image from scratch always
// has one layer, even an empty one.
func changesFiles(img *recipe.Image, base *mount.Image) bool {
	if img.From.Type == recipe.Scratch || base.Layers() == 0 || img.Script() != "" {
		return true
	}
	for _, imp := range img.Imports {
		if imp.Dest != "" {
			return true
		}
	}
	return false
}

// step builds one image.
func (b *builder) step(ctx context.Context, i int, step recipe.Step) (_ *Built, err error) {
	img := step.Image
	fail := func(phase string, line int, err error) error {
		return b.stepError(i, img, phase, line, err)
	}
	base, err := b.base(ctx, i, img)
	if err != nil {
		return nil, fail("base", img.From.Line, err)
	}
	if err := checkBasePlatform(img, base); err != nil {
		return nil, fail("base", img.From.Line, err)
	}
	if err := img.CheckBinds(); err != nil {
		line := img.KeyLine("binds")
		if re := (*recipe.Error)(nil); errors.As(err, &re) {
			line = re.Line
		}
		return nil, fail("binds", line, err)
	}
	for _, imp := range img.Imports {
		if imp.Remote() {
			b.event(i, StatusMessage, "", "fetch "+imp.Source)
			if _, err := b.fetch.fetch(ctx, imp); err != nil {
				return nil, fail("imports", imp.Line, fmt.Errorf("%s: %w", imp.Source, err))
			}
		}
	}
	src := &sources{b: b, ctx: ctx}
	defer func() {
		if cerr := src.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	extra := b.stackerAnnotations(img)
	baseRun, baseMeta := baseIdentity(img, base)
	keys, err := recipe.Key(img, recipe.KeyOptions{BaseDigest: baseRun, BaseConfig: baseMeta, LayerType: b.opt.Format.MediaType(), SourceDateEpoch: b.sde, Resolve: src.resolve, Annotations: extra})
	if err != nil {
		return nil, fail("imports", img.KeyLine("imports"), err)
	}
	if d, ok, err := b.cache.Image(keys.Config, b.s); err != nil {
		return nil, fail("cache", 0, err)
	} else if ok {
		if mi, err := mount.LocalImage(b.s, d.Digest.String()); err == nil {
			b.event(i, StatusCached, d.Digest, "")
			return &Built{Name: img.Name, Descriptor: d, Layers: mi.Layers(), Cache: "image", Platform: platform.String(imagePlatform(img))}, nil
		}
		// a blob went missing (gc, rm): build it again
	}
	var layers []ocispec.Descriptor
	if bi := base.Image(); bi != nil { // nil for scratch
		layers = bi.Manifest().Layers
	}
	cached := ""
	history := append([]ocispec.History(nil), base.Config().History...)
	when := b.created()
	if changesFiles(img, base) {
		d, ok, err := b.cache.Layer(keys.Layer, b.s)
		if err != nil {
			return nil, fail("cache", 0, err)
		}
		empty := false
		if ok {
			cached = "layer"
			b.event(i, StatusReuse, "", "layer "+d.Digest.String())
		} else {
			if d, empty, err = b.buildLayer(ctx, i, img, base, src); err != nil {
				return nil, err
			}
			// A run that changed nothing adds no layer (as in stacker).
			// That is not recorded by layer key, only by the image's
			// config key: a config-only change runs the script again.
			if !empty {
				if err := b.cache.PutLayer(keys.Layer, d); err != nil {
					return nil, fail("cache", 0, err)
				}
			}
		}
		if empty {
			b.event(i, StatusMessage, "", "the run changed nothing: no new layer")
			history = append(history, ocispec.History{Created: &when, CreatedBy: "vessel build " + img.Name, EmptyLayer: true})
		} else {
			layers = append(layers, d)
			history = append(history, ocispec.History{Created: &when, CreatedBy: "vessel build " + img.Name})
		}
	} else {
		history = append(history, ocispec.History{Created: &when, CreatedBy: "vessel build " + img.Name, EmptyLayer: true})
	}
	baseCfg := base.Config().Config
	cfg := img.ApplyConfig(baseCfg)
	if img.LabelsScript() != "" {
		gen, err := b.generateLabels(ctx, i, img, baseCfg.Env, layers, cfg, history, when)
		if err != nil {
			return nil, err
		}
		if len(gen) > 0 {
			cfg.Labels = mergeAnnotations(cfg.Labels, gen)
		}
	}
	res, err := image.Commit(b.s, image.CommitOptions{
		Layers:      layers,
		Config:      cfg,
		Platform:    imagePlatform(img),
		Created:     when,
		History:     history,
		Annotations: mergeAnnotations(extra, img.Annotations),
	})
	if err != nil {
		return nil, fail("commit", 0, err)
	}
	if err := b.cache.PutImage(keys.Config, res.Descriptor); err != nil {
		return nil, fail("cache", 0, err)
	}
	b.event(i, StatusBuilt, res.Descriptor.Digest, "")
	return &Built{Name: img.Name, Descriptor: res.Descriptor, Layers: len(layers), Cache: cached, Platform: platform.String(imagePlatform(img))}, nil
}

// launcher finds the container runner once.
func (b *builder) launcher() (*container.Launcher, error) {
	if b.lnch != nil {
		return b.lnch, nil
	}
	if b.opt.Launcher == nil {
		return nil, errors.New("no container runtime configured")
	}
	l, err := b.opt.Launcher()
	if err != nil {
		return nil, err
	}
	b.lnch = l
	return l, nil
}

// tempDir makes a build directory in the store (same filesystem as the
// blobs, and one overlayfs accepts as an upper directory).
func (b *builder) tempDir(pattern string) (string, error) {
	d, err := b.s.TempDir(pattern)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(d, 0o755); err != nil {
		os.RemoveAll(d)
		return "", err
	}
	return d, nil
}

// DefaultAnnotationsNamespace is stacker's default --annotations-namespace.
const DefaultAnnotationsNamespace = "io.stackeroci"

// stackerAnnotations are the manifest annotations stacker writes for an
// image: NS.stacker.stacker_yaml, the image's definition as written
// (before substitution, so --substitute values never reach the image),
// and NS.stacker.git_version, `git describe --tags --always --dirty` of the
// recipe's directory when it is in a git work tree.
func (b *builder) stackerAnnotations(img *recipe.Image) map[string]string {
	ns := b.opt.AnnotationsNamespace
	out := map[string]string{ns + ".stacker.stacker_yaml": b.plan.File.Section(img)}
	if b.gitVersion != "" {
		out[ns+".stacker.git_version"] = b.gitVersion
	}
	return out
}

// baseIdentity names the base in the cache keys, split the way the keys
// are. run is what the layer key knows: the layer digests and what the run
// script sees of the config (its environment and platform; scripts run as
// root in / whatever the config says), not labels, creation times, history
// or manifest annotations (a new git_version, say). meta is the
// digest of the whole config, for the config key: a base whose metadata
// alone changed gives its dependents a new config (their history is the
// base's plus one entry) without running their scripts again. Both are ""
// for scratch.
func baseIdentity(img *recipe.Image, base *mount.Image) (run, meta digest.Digest) {
	if img.From.Type == recipe.Scratch {
		return "", ""
	}
	cfg := base.Config()
	seen, err := json.Marshal(struct {
		Env      []string         `json:"env"`
		Platform ocispec.Platform `json:"platform"`
	}{cfg.Config.Env, cfg.Platform})
	if err != nil {
		seen = []byte("unencodable")
	}
	all, err := json.Marshal(cfg)
	if err != nil {
		all = []byte("unencodable")
	}
	var sb strings.Builder
	sb.WriteString("vessel-build-base-identity/v2\n" + string(seen) + "\n")
	if bi := base.Image(); bi != nil {
		for _, l := range bi.Manifest().Layers {
			sb.WriteString(l.Digest.String() + "\n")
		}
	}
	return digest.FromString(sb.String()), digest.FromBytes(all)
}

// gitVersion describes the git work tree dir is in, or "" (no git, not a
// work tree, no commit).
func gitVersion(ctx context.Context, dir string) string {
	if _, err := exec.LookPath("git"); err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// safe.directory: a rootless build sees the user's tree as owned by
	// another uid, and must describe it as a root build does.
	out, err := exec.CommandContext(ctx, "git", "-c", "safe.directory=*", "-C", dir, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// mergeAnnotations is base with over's entries set (the recipe's own
// annotations win over stacker's).
func mergeAnnotations(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return nil
	}
	out := make(map[string]string, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}
