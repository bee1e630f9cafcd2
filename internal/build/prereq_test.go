package build

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/store"
)

// prereqFiles is a two-level chain: vessel.yaml lists mid/mid.yaml (and
// base/base.yaml again), mid.yaml lists ../base/base.yaml.
var prereqFiles = map[string]string{
	"base/base.yaml": `
base:
  from:
    type: scratch
  imports:
    - ${{BUSYBOX}}
  run: |
    #!/stacker/imports/busybox sh
    set -e
    /stacker/imports/busybox mkdir -p /bin /etc
    /stacker/imports/busybox cp /stacker/imports/busybox /bin/busybox
    /bin/busybox --install -s /bin
    echo base > /etc/layer
  environment:
    PATH: /bin
`,
	"mid/mid.yaml": `
config:
  prerequisites:
    - ../base/base.yaml
mid:
  from: {type: built, tag: base}
  run: echo ${{MID:mid}} > /etc/mid
`,
	"vessel.yaml": `
config:
  prerequisites: [mid/mid.yaml, base/base.yaml]
app:
  from:
    type: built
    tag: mid
  imports:
    - path: stacker://base/etc/layer
      dest: /etc/from-base
  run: echo app > /etc/app
other:
  from: {type: built, tag: base}
  run: echo other > /etc/other
`,
}

// load reads name (relative to the recipe directory) with its
// prerequisites.
func (e *env) load(name string, subs map[string]string) *recipe.File {
	e.t.Helper()
	f, err := recipe.LoadFile(filepath.Join(e.dir, name), recipe.Options{Substitutions: subs})
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

func (e *env) buildFile(f *recipe.File, opt Options) (*Result, error) {
	e.events, e.runs = nil, 0
	e.out.Reset()
	return Build(context.Background(), f, opt)
}

// TestPrerequisites builds a recipe whose image is built on an image of a
// prerequisite, which is itself built on an image of its own prerequisite:
// every file is built first and once, --only narrows the top file alone,
// substitutions reach every file, progress names the prerequisite files,
// and a second build is cached across all files.
func TestPrerequisites(t *testing.T) {
	e := newEnv(t)
	e.write(prereqFiles)
	subs := map[string]string{"BUSYBOX": busybox, "MID": "middle"}
	f := e.load("vessel.yaml", subs)
	opt := e.options()
	opt.Only = []string{"app"}
	res, err := e.buildFile(f, opt)
	if err != nil {
		t.Fatalf("%v\n%s", err, e.out.String())
	}
	baseFile, midFile := filepath.Join(e.dir, "base/base.yaml"), filepath.Join(e.dir, "mid/mid.yaml")
	var got []string
	for _, im := range res.Images {
		got = append(got, im.Name+"="+im.Ref+"@"+im.File)
	}
	want := []string{"base=base:latest@" + baseFile, "mid=mid:latest@" + midFile, "app=app:latest@"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("result %v, want %v (base once, other not built: --only app)", got, want)
	}
	if e.runs != 3 {
		t.Errorf("%d scripts ran, want 3", e.runs)
	}
	for _, ev := range e.events {
		wantFile := map[string]string{"base": baseFile, "mid": midFile, "app": ""}[ev.Image]
		if ev.File != wantFile || ev.Steps != 3 {
			t.Errorf("event %+v: want file %q, 3 steps", ev, wantFile)
		}
	}
	for _, ref := range []string{"base", "mid", "app"} {
		if _, err := mount.LocalImage(e.s, ref); err != nil {
			t.Errorf("%s is not tagged: %v", ref, err)
		}
	}
	e.withMounted("app", func(root string) {
		for p, want := range map[string]string{"etc/layer": "base\n", "etc/mid": "middle\n", "etc/app": "app\n", "etc/from-base": "base\n"} {
			if got := readFile(t, filepath.Join(root, p)); got != want {
				t.Errorf("/%s = %q, want %q", p, got, want)
			}
		}
	})

	// Everything again, across the three files: no container, nothing new.
	opt = e.options()
	opt.Launcher = func() (*container.Launcher, error) {
		t.Error("a cached rebuild asked for a container runtime")
		return nil, errors.New("no")
	}
	opt.Only = []string{"app"}
	res2, err := e.buildFile(e.load("vessel.yaml", subs), opt)
	if err != nil {
		t.Fatal(err)
	}
	for i, im := range res2.Images {
		if im.Cache != "image" || im.Descriptor.Digest != res.Images[i].Descriptor.Digest {
			t.Errorf("rebuild of %s: %+v, want the cached %s", im.Name, im, res.Images[i].Descriptor.Digest)
		}
	}

	// A change in the middle file rebuilds it and what is built on it.
	res3, err := e.buildFile(e.load("vessel.yaml", map[string]string{"BUSYBOX": busybox, "MID": "changed"}), e.options())
	if err != nil {
		t.Fatalf("%v\n%s", err, e.out.String())
	}
	st := e.statuses()
	if st["base"] != StatusCached || st["mid"] != StatusBuilt || st["app"] != StatusBuilt || st["other"] != StatusBuilt || e.runs != 3 {
		t.Errorf("after a change in mid.yaml: %v, %d runs; want base cached, mid, app and other run", st, e.runs)
	}
	if len(res3.Images) != 4 {
		t.Errorf("result %+v: want base, mid, app, other", res3.Images)
	}
}

// TestPrerequisiteFailure: a failure in the top file keeps the tags of the
// prerequisites built before it; a failure in a prerequisite names its
// file.
func TestPrerequisiteFailure(t *testing.T) {
	e := newEnv(t)
	e.write(prereqFiles)
	e.write(map[string]string{
		"fail.yaml": `
config: {prerequisites: [base/base.yaml]}
broken:
  from: {type: built, tag: base}
  run: exit 4
`,
		"sub/fail.yaml": `
broken2:
  from: {type: built, tag: nothing}
  run: exit 5
nothing:
  from: {type: scratch}
  run: exit 5
`,
		"top.yaml": `
config: {prerequisites: [sub/fail.yaml]}
top:
  from: {type: scratch}
`,
	})
	subs := map[string]string{"BUSYBOX": busybox}
	_, err := e.buildFile(e.load("fail.yaml", subs), e.options())
	var se *StepError
	if !errors.As(err, &se) || se.Image != "broken" || se.Step != 2 || se.Steps != 2 || se.ExitCode != 4 || se.Prerequisite {
		t.Fatalf("error %v (%+v), want broken failing at step 2/2", err, se)
	}
	tags, _ := e.s.List()
	if len(tags) != 1 || tags[0].Name != "base" {
		t.Errorf("tags %+v: want the prerequisite's base alone", tags)
	}

	_, err = e.buildFile(e.load("top.yaml", nil), e.options())
	if !errors.As(err, &se) || se.Image != "nothing" || !se.Prerequisite || !strings.Contains(err.Error(), "build nothing (step 1/3, prerequisite "+filepath.Join(e.dir, "sub/fail.yaml")+"): run") {
		t.Errorf("failure in a prerequisite: %v", err)
	}
}

// TestPrerequisiteErrors: problems with prerequisite files stop the build
// before anything runs (no root needed).
func TestPrerequisiteErrors(t *testing.T) {
	dir := t.TempDir()
	e := &env{t: t, dir: dir}
	e.write(map[string]string{
		"a.yaml":       "config:\n  prerequisites: [b.yaml]\na:\n  from: {type: scratch}\n",
		"b.yaml":       "config:\n  prerequisites: [c/c.yaml]\nb:\n  from: {type: scratch}\n",
		"c/c.yaml":     "config:\n  prerequisites:\n    - ../a.yaml\nc:\n  from: {type: scratch}\n",
		"missing.yaml": "config:\n  prerequisites:\n    - ok.yaml\n    - gone.yaml\nm:\n  from: {type: scratch}\n",
		"ok.yaml":      "ok:\n  from: {type: scratch}\n",
		"ghost.yaml":   "config:\n  prerequisites: [ok.yaml]\ng:\n  from: {type: built, tag: ghost}\n",
	})
	for _, c := range []struct {
		file string
		kind error
		want []string
	}{
		{"a.yaml", recipe.ErrCycle, []string{filepath.Join(dir, "c/c.yaml") + ":3: config.prerequisites: recipe files list each other as prerequisites in a cycle: " +
			filepath.Join(dir, "a.yaml") + " -> " + filepath.Join(dir, "b.yaml") + " -> " + filepath.Join(dir, "c/c.yaml") + " -> " + filepath.Join(dir, "a.yaml")}},
		{"missing.yaml", recipe.ErrPrerequisite, []string{"missing.yaml:4: config.prerequisites: prerequisite " + filepath.Join(dir, "gone.yaml"), "file does not exist"}},
		{"ghost.yaml", recipe.ErrMissingBase, []string{"ghost.yaml:4: image \"g\": from: built base \"ghost\" is not an image of this file or of its prerequisites (searched " +
			filepath.Join(dir, "ghost.yaml") + ", " + filepath.Join(dir, "ok.yaml") + "; images: g, ok)"}},
	} {
		_, err := recipe.LoadFile(filepath.Join(dir, c.file), recipe.Options{})
		if err == nil || !errors.Is(err, c.kind) {
			t.Errorf("%s: %v, want %v", c.file, err, c.kind)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not contain %q", c.file, err, w)
			}
		}
	}

	// A file parsed alone, without its prerequisites, is refused.
	f, err := recipe.ParseFile(filepath.Join(dir, "missing.yaml"), recipe.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), f, Options{Store: s, Mounts: &mount.Manager{Run: t.TempDir()}}); err == nil || !strings.Contains(err.Error(), "recipe.LoadFile") {
		t.Errorf("build of a file without its prerequisites read: %v", err)
	}
}
