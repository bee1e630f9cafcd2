package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFiles writes name -> content under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func paths(fs []*File) []string {
	var out []string
	for _, f := range fs {
		out = append(out, filepath.Base(filepath.Dir(f.Path))+"/"+filepath.Base(f.Path))
	}
	return out
}

// TestLoadChain: prerequisites are read recursively, relative to the file
// that lists them, each once (a diamond shares one *File); their images
// are built bases and stacker:// sources of the files that list them, even
// transitively; substitutions reach every file; plans hold the file's own
// images only.
func TestLoadChain(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"top/vessel.yaml": `
config:
  prerequisites:
    - ../mid/mid.yaml
    - ../lib/lib.yaml
app:
  from: {type: built, tag: mid}
  imports:
    - stacker://root/etc/os-release
`,
		"mid/mid.yaml": `
config:
  prerequisites: ../root/root.yaml
mid:
  from: {type: built, tag: root}
`,
		"lib/lib.yaml": `
config: {prerequisites: [../root/root.yaml]}
lib:
  from: {type: built, tag: root}
`,
		"root/root.yaml": `
root:
  from: {type: tar, url: ${{ROOTFS}}}
`,
	})
	f, err := LoadFile(filepath.Join(dir, "top/vessel.yaml"), Options{Substitutions: map[string]string{"ROOTFS": "rootfs.tar"}})
	if err != nil {
		t.Fatal(err)
	}
	order := f.BuildOrder()
	if got, want := paths(order), []string{"root/root.yaml", "mid/mid.yaml", "lib/lib.yaml", "top/vessel.yaml"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("build order %v, want %v", got, want)
	}
	if order[1].PrerequisiteFiles[0] != order[2].PrerequisiteFiles[0] {
		t.Error("root.yaml was read twice")
	}
	if u := order[0].Image("root").From.URL; u != filepath.Join(dir, "root/rootfs.tar") {
		t.Errorf("tar url %q: want it substituted and relative to root.yaml", u)
	}
	p, err := f.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 1 || len(p.Steps[0].Needs) != 0 {
		t.Errorf("top plan %+v: want app alone, with no needs in this file", p.Steps)
	}
	if got := f.Image("app").Needs(); !reflect.DeepEqual(got, []string{"mid", "root"}) {
		t.Errorf("app needs %v", got)
	}
	if p, err := f.Plan("app"); err != nil || len(p.Steps) != 1 {
		t.Errorf("--only app: %v %v", p, err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"cycle-a.yaml": "config:\n  prerequisites: [cycle-b.yaml]\na:\n  from: {type: scratch}\n",
		"cycle-b.yaml": "config:\n  prerequisites:\n    - sub/../cycle-a.yaml\nb:\n  from: {type: scratch}\n",
		"self.yaml":    "config: {prerequisites: [self.yaml]}\ns:\n  from: {type: scratch}\n",
		"missing.yaml": "# a comment\nconfig:\n  prerequisites:\n    - base.yaml\n    - nope.yaml\nm:\n  from: {type: built, tag: base}\n",
		"base.yaml":    "base:\n  from: {type: scratch}\n",
		"unknown.yaml": "config:\n  prerequisites: [base.yaml]\nu:\n  from:\n    type: built\n    tag: ghost\n",
		"import.yaml":  "config:\n  prerequisites: [base.yaml]\ni:\n  from: {type: scratch}\n  imports: [stacker://ghost/x]\n",
		"dup.yaml":     "config:\n  prerequisites: [base.yaml]\nbase:\n  from: {type: scratch}\n",
		"bad-pre.yaml": "config:\n  prerequisites: [typo.yaml]\nx:\n  from: {type: scratch}\n",
		"typo.yaml":    "t:\n  from: {type: scratch}\n  rnu: echo\n",
		"sib.yaml":     "config:\n  prerequisites: [base.yaml, base2.yaml]\nx:\n  from: {type: scratch}\n",
		"base2.yaml":   "\nbase:\n  from: {type: scratch}\n",
	})
	cases := []struct {
		file string
		kind error
		want []string
	}{
		{"cycle-a.yaml", ErrCycle, []string{"cycle-b.yaml:3: config.prerequisites:", "cycle", "cycle-a.yaml -> " + filepath.Join(dir, "cycle-b.yaml") + " -> " + filepath.Join(dir, "cycle-a.yaml")}},
		{"self.yaml", ErrCycle, []string{"self.yaml:1: config.prerequisites:", "self.yaml -> "}},
		{"missing.yaml", ErrPrerequisite, []string{"missing.yaml:5: config.prerequisites: prerequisite " + filepath.Join(dir, "nope.yaml") + ": file does not exist"}},
		{"unknown.yaml", ErrMissingBase, []string{"unknown.yaml:5: image \"u\": from: built base \"ghost\" is not an image of this file or of its prerequisites", "searched " + filepath.Join(dir, "unknown.yaml") + ", " + filepath.Join(dir, "base.yaml"), "images: base, u"}},
		{"import.yaml", ErrMissingBase, []string{"import.yaml:5", "stacker://ghost/x: \"ghost\" is not an image of this file or of its prerequisites"}},
		{"dup.yaml", ErrDuplicate, []string{"dup.yaml:3: image \"base\": also defined in " + filepath.Join(dir, "base.yaml") + ":1"}},
		{"bad-pre.yaml", ErrUnknownKey, []string{"typo.yaml:3: image \"t\": unknown key \"rnu\""}},
		{"sib.yaml", ErrDuplicate, []string{"base2.yaml:2: image \"base\": also defined in " + filepath.Join(dir, "base.yaml") + ":1"}},
	}
	for _, c := range cases {
		_, err := LoadFile(filepath.Join(dir, c.file), Options{})
		if err == nil || !errors.Is(err, c.kind) || !containsAll(err.Error(), c.want...) {
			t.Errorf("%s: got %v, want %v containing %q", c.file, err, c.kind, c.want)
		}
	}

	// Parse alone does not read prerequisites, and says so.
	_, err := ParseFile(filepath.Join(dir, "missing.yaml"), Options{})
	if !errors.Is(err, ErrMissingBase) || !strings.Contains(err.Error(), "its prerequisites were not read") {
		t.Errorf("ParseFile: %v", err)
	}
	// With External, Parse accepts what the prerequisites define.
	b, _ := os.ReadFile(filepath.Join(dir, "unknown.yaml"))
	if _, err := Parse("unknown.yaml", b, Options{External: map[string]string{"ghost": "ghost.yaml"}}); err != nil {
		t.Errorf("Parse with External: %v", err)
	}
	if _, err := Parse("p.yaml", []byte("config: {prerequisites: ['']}\na: {from: {type: scratch}}\n"), Options{}); err == nil || !strings.Contains(err.Error(), "empty string") {
		t.Errorf("empty prerequisite: %v", err)
	}
}
