package recipe

import (
	"os"
	"testing"
)

// FuzzParse: the recipe parser never panics or hangs, and an accepted recipe
// can always be planned.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"../../examples/vessel.yaml", "testdata/stacker-multistage.yaml", "testdata/stacker-docker.yaml", "testdata/stacker-scratch.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("a: &a\n  from: {type: scratch}\n  <<: [*a, *a]\n"))
	f.Add([]byte("a: {from: {type: built, tag: b}}\nb: {from: {type: built, tag: a}}\n"))
	f.Add([]byte("${{X:a}}:\n  from: {type: scratch}\n  cmd: \"'x\\\"\"\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		file, err := Parse("fuzz.yaml", in, Options{Substitutions: map[string]string{"X": "y"}, Dir: "/r"})
		if err != nil {
			return
		}
		p, err := file.Plan()
		if err != nil {
			t.Fatalf("accepted recipe does not plan: %v", err)
		}
		if len(p.Steps) != len(file.Images) {
			t.Fatalf("plan has %d steps for %d images", len(p.Steps), len(file.Images))
		}
		for _, img := range file.Images {
			img.Script()
		}
	})
}
