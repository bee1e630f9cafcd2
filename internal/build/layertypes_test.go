package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/recipe"
)

// TestBuildLayerTypes: one run builds a squashfs and an erofs image of
// every image, tagged NAME-squashfs and NAME-erofs as stacker names them,
// each built on the base of its own type; NAME:latest is not touched and
// a second run is cached for both types.
func TestBuildLayerTypes(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs is not installed (apt-get install erofs-utils)")
	}
	e := newEnv(t)
	rec := baseRecipe + `
app:
  from: {type: built, tag: base}
  run: echo app > /app
`
	p := filepath.Join(e.dir, "vessel.yaml")
	if err := os.WriteFile(p, []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := recipe.ParseFile(p, recipe.Options{})
	if err != nil {
		t.Fatal(err)
	}
	formats := []layer.Format{layer.DefaultFormat(layer.Squashfs), layer.DefaultFormat(layer.Erofs)}
	res, err := BuildLayerTypes(context.Background(), f, formats, e.options())
	if err != nil {
		t.Fatal(err, e.out.String())
	}
	var refs []string
	for _, im := range res.Images {
		refs = append(refs, im.Ref+" "+im.LayerType)
	}
	want := []string{"base-squashfs:latest squashfs", "app-squashfs:latest squashfs", "base-erofs:latest erofs", "app-erofs:latest erofs"}
	if len(refs) != len(want) {
		t.Fatalf("results %v, want %v", refs, want)
	}
	for i := range want {
		if refs[i] != want[i] {
			t.Errorf("result %d: %q, want %q", i, refs[i], want[i])
		}
	}
	for _, c := range []struct {
		ref string
		typ layer.Type
	}{{"app-squashfs", layer.Squashfs}, {"app-erofs", layer.Erofs}} {
		img, err := image.Read(e.s, c.ref)
		if err != nil {
			t.Fatalf("%s: %v", c.ref, err)
		}
		for i, l := range img.Layers() {
			if f, err := layer.ParseMediaType(l.MediaType); err != nil || f.Type != c.typ {
				t.Errorf("%s layer %d: %v (%v), want %s", c.ref, i, f, err, c.typ)
			}
		}
		e.withMounted(c.ref, func(root string) {
			if got := readFile(t, filepath.Join(root, "app")); got != "app\n" {
				t.Errorf("%s: /app = %q", c.ref, got)
			}
		})
	}
	if _, err := image.Read(e.s, "app"); err == nil {
		t.Error("app:latest was tagged by a build of several layer types")
	}
	e.events = nil
	if _, err := BuildLayerTypes(context.Background(), f, formats, e.options()); err != nil {
		t.Fatal(err)
	}
	cached := 0
	types := map[string]int{}
	for _, ev := range e.events {
		types[ev.LayerType]++
		if ev.Status == StatusCached {
			cached++
		}
		if ev.Status == StatusRun {
			t.Errorf("second run ran %s", ev.Image)
		}
	}
	if cached != 4 {
		t.Errorf("second run: %d images cached, want 4", cached)
	}
	if types["squashfs"] == 0 || types["erofs"] == 0 || types[""] != 0 {
		t.Errorf("events by layer type: %v", types)
	}
	if _, err := BuildLayerTypes(context.Background(), f, []layer.Format{formats[0], formats[0]}, e.options()); err == nil {
		t.Error("a layer type given twice was accepted")
	}
}
