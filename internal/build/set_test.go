package build

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/vesselos/vessel/internal/recipe"
)

// TestBuildFileSet: every stacker.yaml under a directory (stacker's
// recursive-build) in one build: app/stacker.yaml's image is built on
// base/stacker.yaml's without listing it as a prerequisite, so base goes
// first although it sorts after app; everything is tagged, and a second
// run is cached throughout.
func TestBuildFileSet(t *testing.T) {
	e := newEnv(t)
	e.write(map[string]string{
		"tree/base/stacker.yaml": baseRecipe,
		"tree/app/stacker.yaml":  "app:\n  from: {type: built, tag: base}\n  imports:\n    - stacker://tool/tool\n  run: cp /stacker/imports/tool /app\n",
		"tree/tool/stacker.yaml": "tool:\n  from: {type: built, tag: base}\n  build_only: true\n  run: echo tool > /tool\n",
	})
	tree := filepath.Join(e.dir, "tree")
	load := func() *recipe.File {
		paths, err := recipe.FindFiles(tree, "")
		if err != nil {
			t.Fatal(err)
		}
		f, err := recipe.LoadFiles(tree, paths, recipe.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	res, err := Build(context.Background(), load(), e.options())
	if err != nil {
		t.Fatal(err, e.out.String())
	}
	var got []string
	for _, im := range res.Images {
		got = append(got, im.Name+"@"+filepath.Base(filepath.Dir(im.File)))
	}
	want := []string{"base@base", "tool@tool", "app@app"}
	if len(got) != len(want) {
		t.Fatalf("built %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("step %d: %s, want %s", i+1, got[i], want[i])
		}
	}
	e.withMounted("app", func(root string) {
		if s := readFile(t, filepath.Join(root, "app")); s != "tool\n" {
			t.Errorf("/app = %q", s)
		}
	})
	e.events = nil
	if _, err := Build(context.Background(), load(), e.options()); err != nil {
		t.Fatal(err)
	}
	if st := e.statuses(); st["base"] != StatusCached || st["tool"] != StatusCached || st["app"] != StatusCached {
		t.Errorf("second run: %v", st)
	}
	e.assertNoLeaks()
}
