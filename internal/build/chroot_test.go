package build

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/recipe"
)

// TestChroot: a command in a build container of a recipe's image (a
// build_only one, built first and not tagged): the image's files, the
// build environment, the imports at /stacker/imports (local, stacker://
// and http) and the host
// binds; its exit code comes back; its changes are thrown away; a store
// image works without a recipe; an unknown name is refused; a cancelled
// command is stopped; nothing is left mounted or staged on any path.
func TestChroot(t *testing.T) {
	e := newEnv(t)
	e.write(map[string]string{"tool.txt": "tool\n", "shared/in": "from host\n"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dl/remote.txt" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("downloaded\n"))
	}))
	defer srv.Close()
	rec := baseRecipe + `
dev:
  from: {type: built, tag: base}
  build_only: true
  imports:
    - tool.txt
    - stacker://base/data/keep
    - ` + srv.URL + `/dl/remote.txt
  binds:
    - shared -> /shared
  build_env:
    MODE: debug
  run: echo dev > /dev.txt
`
	p := filepath.Join(e.dir, "vessel.yaml")
	if err := os.WriteFile(p, []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := recipe.LoadFile(p, recipe.Options{})
	if err != nil {
		t.Fatal(err)
	}
	run := func(ctx context.Context, f *recipe.File, name string, args ...string) (int, string, error) {
		var out bytes.Buffer
		code, err := Chroot(ctx, f, e.options(), ChrootOptions{Image: name, Args: args, Stdout: &out, Stderr: &out})
		return code, out.String(), err
	}
	code, out, err := run(context.Background(), f, "dev", "/bin/sh", "-c",
		`cat /dev.txt /data/a /stacker/imports/tool.txt /stacker/imports/keep /stacker/imports/remote.txt /shared/in; echo "$MODE $STACKER_LAYER_NAME"; echo w > /shared/out; touch /new; exit 7`)
	if err != nil {
		t.Fatal(err, e.out.String())
	}
	if code != 7 {
		t.Errorf("exit code %d, want 7\n%s", code, out)
	}
	if want := "dev\na\ntool\nkeep\ndownloaded\nfrom host\ndebug dev\n"; out != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if b, err := os.ReadFile(filepath.Join(e.dir, "shared/out")); err != nil || string(b) != "w\n" {
		t.Errorf("bind not writable: %q %v", b, err)
	}
	if code, _, err := run(context.Background(), f, "dev", "/bin/test", "-e", "/new"); err != nil || code != 1 {
		t.Errorf("the first chroot's change survived: code %d, %v", code, err)
	}
	if _, err := image.Read(e.s, "dev"); err == nil {
		t.Error("chroot tagged a build_only image")
	}
	// A store image, no recipe; the default image is the recipe's first.
	e.mustBuild(rec) // tags base
	if code, out, err := run(context.Background(), nil, "base", "/bin/cat", "/data/keep"); err != nil || code != 0 || out != "keep\n" {
		t.Errorf("store image: %d %q %v", code, out, err)
	}
	if code, out, err := run(context.Background(), f, "", "/bin/sh", "-c", "echo $STACKER_LAYER_NAME"); err != nil || code != 0 || out != "base\n" {
		t.Errorf("default image: %d %q %v", code, out, err)
	}
	if _, _, err := run(context.Background(), f, "ghost"); err == nil || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("unknown image: %v", err)
	}
	if _, _, err := run(context.Background(), nil, ""); !errors.Is(err, ErrNoImage) {
		t.Errorf("no image: %v", err)
	}
	// An image for an architecture nothing here runs: refused before any
	// container starts, as binfmt says.
	if binfmt.Check("riscv64") != nil {
		base, err := image.Read(e.s, "base")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := image.Commit(e.s, image.CommitOptions{Ref: "rv:latest", Layers: base.Manifest().Layers, Config: base.Config().Config,
			Platform: ocispec.Platform{OS: "linux", Architecture: "riscv64"}, Created: testTime()}); err != nil {
			t.Fatal(err)
		}
		var nr *binfmt.NotRegisteredError
		if _, _, err := run(context.Background(), nil, "rv", "/bin/true"); !errors.As(err, &nr) {
			t.Errorf("a riscv64 image with no emulator: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if code, _, err := run(ctx, f, "dev", "/bin/sleep", "600"); err == nil && code == 0 {
		t.Error("a cancelled chroot succeeded")
	}
	e.assertNoLeaks()
}
