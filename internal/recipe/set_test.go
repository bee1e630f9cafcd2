package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestLoadFiles: the recipes under a directory (stacker's recursive-build)
// are found (hidden directories skipped) and ordered so that a file comes
// after its prerequisites and after the files whose images it is built on,
// even without listing them; a prerequisite outside the directory is
// built too, once.
func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"tree/app/stacker.yaml":   "app:\n  from: {type: built, tag: base}\n  imports:\n    - stacker://tool/bin/tool\n",
		"tree/base/stacker.yaml":  "base:\n  from: {type: scratch}\n",
		"tree/tools/stacker.yaml": "config:\n  prerequisites:\n    - ../../outside/lib.yaml\ntool:\n  from: {type: built, tag: lib}\n",
		"tree/other/vessel.yaml":  "solo:\n  from: {type: scratch}\n",
		"tree/notes/readme.yaml":  "not: a recipe\n",
		"tree/.git/stacker.yaml":  "ghost:\n  from: {type: scratch}\n",
		"outside/lib.yaml":        "lib:\n  from: {type: built, tag: base}\n",
	})
	tree := filepath.Join(dir, "tree")
	found, err := FindFiles(tree, "")
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	for _, p := range found {
		r, _ := filepath.Rel(tree, p)
		rel = append(rel, r)
	}
	if want := []string{"app/stacker.yaml", "base/stacker.yaml", "other/vessel.yaml", "tools/stacker.yaml"}; !reflect.DeepEqual(rel, want) {
		t.Errorf("found %v, want %v", rel, want)
	}
	top, err := LoadFiles(tree, found, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range top.BuildOrder() {
		for _, img := range f.Images {
			names = append(names, img.Name)
		}
	}
	// base before app (which names it) although app sorts first; lib (a
	// prerequisite outside the tree, built on base) before tool, tool
	// before app (a stacker:// source).
	if want := []string{"base", "lib", "tool", "app", "solo"}; !reflect.DeepEqual(names, want) {
		t.Errorf("build order %v, want %v", names, want)
	}
	if len(top.Images) != 0 || len(top.PrerequisiteFiles) != 5 {
		t.Errorf("top: %d images, %d files", len(top.Images), len(top.PrerequisiteFiles))
	}
	// narrowed by pattern
	found, err = FindFiles(tree, `/vessel\.yaml$`)
	if err != nil || len(found) != 1 || !strings.HasSuffix(found[0], "other/vessel.yaml") {
		t.Errorf("pattern: %v %v", found, err)
	}
}

func TestLoadFilesErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		kind  error
		want  []string
	}{
		{"duplicate", map[string]string{
			"a/stacker.yaml": "x:\n  from: {type: scratch}\n",
			"b/stacker.yaml": "y:\n  from: {type: scratch}\nx:\n  from: {type: scratch}\n",
		}, ErrDuplicate, []string{"b/stacker.yaml:3", "also defined in", "a/stacker.yaml:1"}},
		{"missing base", map[string]string{
			"a/stacker.yaml": "x:\n  from: {type: built, tag: nowhere}\n",
		}, ErrMissingBase, []string{"a/stacker.yaml:2", `"nowhere"`}},
		{"cycle", map[string]string{
			"a/stacker.yaml": "x:\n  from: {type: built, tag: y}\n",
			"b/stacker.yaml": "y:\n  from: {type: built, tag: x}\n",
		}, ErrCycle, []string{"a/stacker.yaml -> ", "b/stacker.yaml -> ", "cycle"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tc.files)
			found, err := FindFiles(dir, "")
			if err != nil {
				t.Fatal(err)
			}
			_, err = LoadFiles(dir, found, Options{})
			if !errors.Is(err, tc.kind) {
				t.Fatalf("error %v, want %v", err, tc.kind)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	if _, err := FindFiles(t.TempDir(), ""); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "no file matches") {
		t.Errorf("empty directory: %v", err)
	}
	if _, err := FindFiles(t.TempDir(), "("); err == nil || !strings.Contains(err.Error(), "pattern") {
		t.Errorf("bad pattern: %v", err)
	}
}
