package mount

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnverifiedImageDoesNotCompile proves that code outside this package
// cannot mount an image that did not come from LocalImage, SystemImage or
// Empty: each snippet below is type-checked as a package of this module
// (so it may import internal packages), and each but the control must fail
// to compile, with the error the snippet is about.
func TestUnverifiedImageDoesNotCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not installed")
	}
	const header = `package snippet

import (
	"context"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/store"
)

var _ = digest.FromString
var _ *store.Store

func use(m *mount.Manager, img *mount.Image) {
	_, _ = m.Mount(context.Background(), img, "id", "/mnt", mount.Owner{}, mount.Options{})
}
`
	cases := []struct {
		name, body, wantErr string
	}{
		{"control: a LocalImage mounts", `
func f(m *mount.Manager, s *store.Store) {
	img, _ := mount.LocalImage(s, "demo:1")
	use(m, img)
}`, ""},
		{"exported fields", `
func f(m *mount.Manager) { use(m, &mount.Image{Name: "demo:1"}) }`, "unknown field Name"},
		{"unexported fields", `
func f(m *mount.Manager) { use(m, &mount.Image{img: nil}) }`, "unexported field img"},
		{"resolve without checks", `
func f(m *mount.Manager, s *store.Store) {
	img, _ := mount.Resolve(s, "demo:1")
	use(m, img)
}`, "undefined: mount.Resolve"},
		{"a look-alike type", `
type Image struct{ Name string }

func f(m *mount.Manager) { use(m, &Image{Name: "demo:1"}) }`, "cannot use"},
		{"layers from outside", `
func f(m *mount.Manager) { use(m, &mount.Image{Layers: nil}) }`, "unknown field Layers"},
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove("testdata") // only if empty: the snippets remove themselves
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("testdata", "compile-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			if err := os.WriteFile(filepath.Join(dir, "snippet.go"), []byte(header+c.body+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(goBin, "build", "-o", os.DevNull, "./"+filepath.ToSlash(dir))
			out, err := cmd.CombinedOutput()
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("the control snippet does not compile (so the others prove nothing): %v\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("compiled; want a compile error %q", c.wantErr)
			}
			if !strings.Contains(string(out), c.wantErr) {
				t.Fatalf("compile error does not mention %q:\n%s", c.wantErr, out)
			}
		})
	}
}

// The one value that compiles without a constructor, the zero Image, is
// refused when it is planned or mounted.
func TestZeroImageRefused(t *testing.T) {
	for _, img := range []*Image{nil, {}} {
		if _, err := NewPlan("/run/vessel", "z", img, "/mnt", ModeUserspace, Options{Writable: true}); err == nil || !strings.Contains(err.Error(), "not made by mount.LocalImage") {
			t.Errorf("NewPlan(%#v): %v, want a refusal", img, err)
		}
	}
}
