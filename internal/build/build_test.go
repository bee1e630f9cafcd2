package build

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/registry/registrytest"
)

// TestExample builds examples/vessel.yaml, checks what the app image holds
// and how it is configured, then rebuilds it with no container work.
func TestExample(t *testing.T) {
	e := newEnv(t)
	f, err := recipe.ParseFile("../../examples/vessel.yaml", recipe.Options{Substitutions: map[string]string{"BUSYBOX": busybox}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(context.Background(), f, e.options())
	if err != nil {
		t.Fatalf("%v\n%s", err, e.out.String())
	}
	if len(res.Images) != 2 || res.Images[0].Ref != "base:latest" || res.Images[1].Ref != "app:latest" || res.Images[1].Layers != 2 {
		t.Fatalf("result: %+v", res.Images)
	}
	if !strings.Contains(e.out.String(), "+ cp /stacker/imports/index.html /www/index.html") {
		t.Errorf("the script's output (sh -x) did not stream to Output:\n%s", e.out.String())
	}
	e.withMounted("app", func(root string) {
		if got := readFile(t, filepath.Join(root, "www/index.html")); !strings.Contains(got, "<") {
			t.Errorf("index.html = %q", got)
		}
		if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "/bin/busybox" {
			t.Errorf("/bin/sh -> %q, %v", l, err)
		}
		// Mount points the runtime made, and the build's own binds, are
		// not part of any layer.
		for _, p := range []string{"proc", "dev", "sys", "stacker", "vessel"} {
			if exists(filepath.Join(root, p)) {
				t.Errorf("/%s ended up in the image", p)
			}
		}
		fi, err := os.Stat(filepath.Join(root, "tmp"))
		if err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
			t.Errorf("/tmp: %v %v, want 1777", fi, err)
		}
	})
	img, err := mount.LocalImage(e.s, "app")
	if err != nil {
		t.Fatal(err)
	}
	c := img.Config().Config
	if strings.Join(c.Cmd, " ") != "/bin/httpd -f -p 127.0.0.1:8080 -h /www" || c.WorkingDir != "/www" {
		t.Errorf("config: cmd %q, working dir %q", c.Cmd, c.WorkingDir)
	}
	if strings.Join(c.Env, ",") != "PATH=/bin,HTTPD_PORT=8080" {
		t.Errorf("env %q: want the base's PATH then HTTPD_PORT", c.Env)
	}
	if c.Labels["org.opencontainers.image.title"] != "vessel-example-app" {
		t.Errorf("labels %v", c.Labels)
	}
	m, err := e.s.Manifest(res.Images[0].Descriptor.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if m.Annotations["org.opencontainers.image.description"] != "busybox on an empty root" {
		t.Errorf("manifest annotations %v", m.Annotations)
	}

	// Unchanged recipe: every image cached, and no runtime even looked for.
	opt := e.options()
	opt.Launcher = func() (*container.Launcher, error) {
		t.Error("a cached rebuild asked for a container runtime")
		return nil, errors.New("no")
	}
	e.events = nil
	res2, err := Build(context.Background(), f, opt)
	if err != nil {
		t.Fatal(err)
	}
	for i := range res.Images {
		if res2.Images[i].Descriptor.Digest != res.Images[i].Descriptor.Digest || res2.Images[i].Cache != "image" {
			t.Errorf("rebuild of %s: %+v, want the cached %s", res.Images[i].Name, res2.Images[i], res.Images[i].Descriptor.Digest)
		}
	}
}

// TestWhiteouts deletes a file, a directory and replaces a directory in a
// child image: the layer holds whiteouts and an opaque directory, and the
// mounted child shows the deletions.
func TestWhiteouts(t *testing.T) {
	e := newEnv(t)
	res := e.mustBuild(baseRecipe + `
child:
  from:
    type: built
    tag: base
  run: |
    rm /data/a
    rm -r /data/dir
    mkdir /data/dir
    echo y > /data/dir/y
`)
	e.withMounted("child", func(root string) {
		for _, gone := range []string{"data/a", "data/dir/x"} {
			if exists(filepath.Join(root, gone)) {
				t.Errorf("/%s was deleted by run but is in the image", gone)
			}
		}
		if got := readFile(t, filepath.Join(root, "data/dir/y")); got != "y\n" {
			t.Errorf("/data/dir/y = %q", got)
		}
		if got := readFile(t, filepath.Join(root, "data/keep")); got != "keep\n" {
			t.Errorf("/data/keep = %q", got)
		}
	})
	e.withMounted("base", func(root string) {
		if got := readFile(t, filepath.Join(root, "data/a")); got != "a\n" {
			t.Errorf("base changed: /data/a = %q", got)
		}
	})
	// The child's own layer, read by unsquashfs: a 0:0 character device
	// for the deleted file.
	top := res.Images[1]
	m, err := e.s.Manifest(top.Descriptor.Digest)
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := e.s.BlobPath(m.Layers[len(m.Layers)-1].Digest)
	out, err := exec.Command("unsquashfs", "-lls", "-d", "/r", blob).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	var whiteout bool
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "c") && strings.HasSuffix(l, "/r/data/a") {
			whiteout = true
		}
	}
	if !whiteout {
		t.Errorf("no whiteout for /data/a in the child's layer:\n%s", out)
	}
	x := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command("unsquashfs", "-d", x, blob).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(x, "data/a"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("/data/a in the layer: mode %o rdev %d (%v), want a 0:0 character device", st.Mode, st.Rdev, err)
	}
	// The replaced directory: its old entries are whiteouts, not an
	// opaque xattr (see flattenOpaque), so root and rootless layers agree.
	if err := unix.Lstat(filepath.Join(x, "data/dir/x"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("/data/dir/x in the layer: mode %o (%v), want a whiteout", st.Mode, err)
	}
	v := make([]byte, 8)
	for _, name := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if _, err := unix.Lgetxattr(filepath.Join(x, "data/dir"), name, v); err == nil {
			t.Errorf("/data/dir in the layer still has %s", name)
		}
	}
}

// TestCache checks what each kind of change rebuilds.
func TestCache(t *testing.T) {
	e := newEnv(t)
	rec := func(mid, leafLabel string) string {
		return baseRecipe + `
mid:
  from: {type: built, tag: base}
  run: echo ` + mid + ` > /mid
leaf:
  from: {type: built, tag: mid}
  run: echo leaf > /leaf
  labels: {l: "` + leafLabel + `"}
other:
  from: {type: built, tag: base}
  run: echo other > /other
`
	}
	first := e.mustBuild(rec("one", "a"))
	if e.runs != 4 {
		t.Errorf("first build ran %d scripts, want 4", e.runs)
	}
	digests := func(r *Result) map[string]string {
		out := map[string]string{}
		for _, im := range r.Images {
			out[im.Name] = im.Descriptor.Digest.String()
		}
		return out
	}
	d1 := digests(first)

	e.mustBuild(rec("one", "a"))
	if e.runs != 0 {
		t.Errorf("unchanged recipe ran %d scripts", e.runs)
	}
	for _, n := range []string{"base", "mid", "leaf", "other"} {
		if e.statuses()[n] != StatusCached {
			t.Errorf("unchanged recipe: %s is %q, want cached", n, e.statuses()[n])
		}
	}

	// Only a label of leaf: its layer is reused, only the config is new.
	r := e.mustBuild(rec("one", "b"))
	st := e.statuses()
	if e.runs != 0 || st["leaf.work"] != StatusReuse || st["leaf"] != StatusBuilt || st["mid"] != StatusCached {
		t.Errorf("label change: runs %d, statuses %v", e.runs, st)
	}
	if d := digests(r); d["leaf"] == d1["leaf"] || d["mid"] != d1["mid"] {
		t.Errorf("label change: digests %v, before %v", d, d1)
	}

	// mid's script: mid and leaf run again, base and other do not.
	e.mustBuild(rec("two", "b"))
	st = e.statuses()
	if e.runs != 2 || st["mid.work"] != StatusRun || st["leaf.work"] != StatusRun || st["base"] != StatusCached || st["other"] != StatusCached {
		t.Errorf("mid change: runs %d, statuses %v", e.runs, st)
	}
	e.withMounted("leaf", func(root string) {
		if got := readFile(t, filepath.Join(root, "mid")); got != "two\n" {
			t.Errorf("leaf sees /mid = %q", got)
		}
	})

	// An import's content invalidates; its mtime does not.
	e.write(map[string]string{"data.txt": "v1\n"})
	withImport := rec("two", "b") + `
imp:
  from: {type: built, tag: base}
  imports: [data.txt]
  run: cp /stacker/imports/data.txt /data.txt
`
	e.mustBuild(withImport)
	if e.runs != 1 {
		t.Errorf("new image: %d runs, want 1", e.runs)
	}
	os.Chtimes(filepath.Join(e.dir, "data.txt"), testTime(), testTime())
	e.mustBuild(withImport)
	if e.runs != 0 {
		t.Errorf("touched import: %d runs, want 0", e.runs)
	}
	e.write(map[string]string{"data.txt": "v2\n"})
	e.mustBuild(withImport)
	if e.runs != 1 || e.statuses()["imp.work"] != StatusRun {
		t.Errorf("changed import: runs %d, statuses %v", e.runs, e.statuses())
	}

	// --no-cache runs everything again and gives the same digests.
	opt := e.options()
	opt.NoCache = true
	r2, err := e.build(withImport, opt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.runs != 5 {
		t.Errorf("--no-cache ran %d scripts, want 5", e.runs)
	}
	prev := digests(e.mustBuild(withImport))
	if d := digests(r2); d["leaf"] != prev["leaf"] || d["imp"] != prev["imp"] {
		t.Errorf("--no-cache digests %v differ from cached %v", d, prev)
	}
}

// TestReproducible builds the same recipe on two clean stores.
func TestReproducible(t *testing.T) {
	var got [2]map[string]string
	for i := range got {
		e := newEnv(t)
		e.write(map[string]string{"conf/app.conf": "x=1\n", "conf/sub/more": "y\n"})
		res := e.mustBuild(baseRecipe + `
app:
  from: {type: built, tag: base}
  imports:
    - path: conf/
      dest: /etc/app/
    - path: conf/app.conf
      dest: /etc/app.conf
      mode: 0600
      uid: 1000
      gid: 1001
  run: |
    echo built > /built-at; sleep 1.1
    touch /etc/app/new
  entrypoint: /bin/sh
`)
		got[i] = map[string]string{}
		for _, im := range res.Images {
			got[i][im.Name] = im.Descriptor.Digest.String()
		}
		if i == 0 {
			e.withMounted("app", func(root string) {
				var st unix.Stat_t
				if err := unix.Stat(filepath.Join(root, "etc/app.conf"), &st); err != nil || st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o777 != 0o600 {
					t.Errorf("/etc/app.conf: uid %d gid %d mode %o (%v), want 1000:1001 0600", st.Uid, st.Gid, st.Mode&0o777, err)
				}
				if got := readFile(t, filepath.Join(root, "etc/app/sub/more")); got != "y\n" {
					t.Errorf("/etc/app/sub/more = %q", got)
				}
				if !exists(filepath.Join(root, "etc/app/new")) || !exists(filepath.Join(root, "etc/passwd")) {
					t.Error("the script's file or the base's /etc/passwd is missing")
				}
			})
		}
	}
	if got[0]["app"] != got[1]["app"] || got[0]["base"] != got[1]["base"] {
		t.Errorf("two clean builds differ: %v vs %v", got[0], got[1])
	}
}

// TestFailure: a failing script stops the build with the image, the step,
// the exit code and the output's tail, and tags nothing.
func TestFailure(t *testing.T) {
	e := newEnv(t)
	_, err := e.build(baseRecipe+`
bad:
  from: {type: built, tag: base}
  run: |
    echo line one
    echo to stderr >&2
    exit 3
after:
  from: {type: built, tag: bad}
  run: echo never
`, e.options(), nil)
	var se *StepError
	if !errors.As(err, &se) {
		t.Fatalf("error %v, want a *StepError", err)
	}
	if se.Image != "bad" || se.Step != 2 || se.Steps != 3 || se.ExitCode != 3 || se.Phase != "run" || se.Line == 0 {
		t.Errorf("step error %+v", se)
	}
	msg := err.Error()
	for _, want := range []string{"build bad (step 2/3): run (", "vessel.yaml:", "exited with code 3", "line one", "to stderr\n"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if tags, _ := e.s.List(); len(tags) != 0 {
		t.Errorf("a failed build tagged %v", tags)
	}
	if e.runs != 2 {
		t.Errorf("%d scripts ran, want 2 (base, bad)", e.runs)
	}

	// A script that cannot start (no /bin/sh on scratch).
	_, err = e.build(`
noshell:
  from: {type: scratch}
  run: echo hi
`, e.options(), nil)
	if !errors.As(err, &se) || se.Image != "noshell" || se.Phase != "run" || !strings.Contains(err.Error(), "interpreter /bin/sh is not in the image") {
		t.Errorf("scratch without a shell: %v", err)
	}
}

// TestBadInput: problems found before any container runs.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ recipe, want string }{
		{"a:\n  from: {type: scratch}\n  imports: [missing.txt]\n", "missing.txt"},
		{"a:\n  from: {type: oci, url: nolayout:tag}\n", "oci base"},
		{"a:\n  from: {type: tar, url: none.tar}\n", "tar base"},
		{"a:\n  from: {type: scratch}\nb:\n  from: {type: built, tag: a}\n  arch: arm64\n", "the base is a linux/amd64 image and b is built for linux/arm64/v8"},
	} {
		_, err := e.build(tc.recipe, e.options(), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("recipe %q: error %v, want %q", tc.recipe, err, tc.want)
		}
	}
	opt := e.options()
	opt.Only = []string{"nope"}
	if _, err := e.build("a:\n  from: {type: scratch}\n", opt, nil); err == nil || !strings.Contains(err.Error(), "image nope: no such image") {
		t.Errorf("--only nope: %v", err)
	}
}

// TestBases builds on a tar base and an OCI layout base; each is converted
// once.
func TestBases(t *testing.T) {
	e := newEnv(t)
	tree := t.TempDir()
	for _, d := range []string{"bin", "etc"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	cp := exec.Command("cp", busybox, filepath.Join(tree, "bin/busybox"))
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
	os.WriteFile(filepath.Join(tree, "etc/os-release"), []byte("ID=tarbase\n"), 0o644)
	tarball := filepath.Join(e.dir, "rootfs.tar.gz")
	if out, err := exec.Command("tar", "-C", tree, "-czf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	layout := filepath.Join(e.dir, "layout")
	makeLayout(t, layout, "v1", tree)
	rec := `
fromtar:
  from: {type: tar, url: rootfs.tar.gz}
  run: cat /etc/os-release > /seen
fromoci:
  from: {type: oci, url: layout:v1}
  run: cat /etc/os-release > /seen
`
	e.mustBuild(rec)
	converts := 0
	for _, ev := range e.events {
		if ev.Status == StatusBase {
			converts++
		}
	}
	if converts != 2 {
		t.Errorf("%d base conversions, want 2", converts)
	}
	for _, n := range []string{"fromtar", "fromoci"} {
		e.withMounted(n, func(root string) {
			if got := readFile(t, filepath.Join(root, "seen")); got != "ID=tarbase\n" {
				t.Errorf("%s: /seen = %q", n, got)
			}
		})
	}
	// Another image on the same bases: no new conversion.
	e.mustBuild(rec + `
again:
  from: {type: oci, url: layout:v1}
  run: echo again > /again
`)
	for _, ev := range e.events {
		if ev.Status == StatusBase {
			t.Errorf("base converted again: %+v", ev)
		}
	}
	if e.runs != 1 {
		t.Errorf("%d runs, want 1", e.runs)
	}
}

// TestStackerImport copies a file out of a build_only image.
func TestStackerImport(t *testing.T) {
	e := newEnv(t)
	res := e.mustBuild(baseRecipe + `
builder:
  from: {type: built, tag: base}
  build_only: true
  run: |
    mkdir -p /out
    echo artifact > /out/thing
    ln -s /out/thing /out/link
final:
  from: {type: built, tag: base}
  imports:
    - stacker://builder/out/link
  run: cp /stacker/imports/link /thing
`)
	for _, im := range res.Images {
		if im.Name == "builder" && im.Ref != "" {
			t.Errorf("build_only image tagged as %s", im.Ref)
		}
	}
	if _, err := e.s.Resolve("builder"); err == nil {
		t.Error("build_only image is in the store's tags")
	}
	e.withMounted("final", func(root string) {
		if got := readFile(t, filepath.Join(root, "thing")); got != "artifact\n" {
			t.Errorf("/thing = %q", got)
		}
	})
}

// TestErofs builds with erofs layers.
func TestErofs(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs is not installed (apt-get install erofs-utils)")
	}
	e := newEnv(t)
	opt := e.options()
	opt.Format = layer.DefaultFormat(layer.Erofs)
	if _, err := e.build(baseRecipe+`
child:
  from: {type: built, tag: base}
  run: rm /data/a
`, opt, nil); err != nil {
		t.Fatal(err, e.out.String())
	}
	img, err := image.Read(e.s, "child")
	if err != nil {
		t.Fatal(err)
	}
	if f, err := layer.ParseMediaType(img.Layers()[0].MediaType); err != nil || f.Type != layer.Erofs {
		t.Errorf("layer format %v (%v)", f, err)
	}
	e.withMounted("child", func(root string) {
		if exists(filepath.Join(root, "data/a")) || !exists(filepath.Join(root, "data/keep")) {
			t.Error("erofs whiteout not honoured")
		}
	})
}

// TestDockerBase pulls a base from a real registry (Debian's
// docker-registry on loopback), converts it once and builds on it.
func TestDockerBase(t *testing.T) {
	e := newEnv(t)
	if !registrytest.Available() {
		t.Skip("docker-registry is not installed (make deps installs it)")
	}
	reg := registrytest.Start(t, registrytest.Options{})
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	if out, err := exec.Command("cp", busybox, filepath.Join(tree, "bin/busybox")).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	os.Symlink("busybox", filepath.Join(tree, "bin/sh"))
	layout := filepath.Join(t.TempDir(), "layout")
	makeLayout(t, layout, "v1", tree)
	c, err := registry.New(registry.Options{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := registry.ParseReference("docker://" + reg.Host + "/base:v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(context.Background(), registry.Layout(layout, "v1"), registry.Registry(ref)); err != nil {
		t.Fatal(err)
	}
	opt := e.options()
	opt.Registry = func(insecure bool) (*registry.Client, error) {
		return registry.New(registry.Options{PlainHTTP: insecure})
	}
	rec := "app:\n  from: {type: docker, url: \"docker://" + reg.Host + "/base:v1\", insecure: true}\n  run: echo $FROM_LAYOUT > /seen\n"
	if _, err := e.build(rec, opt, nil); err != nil {
		t.Fatal(err, e.out.String())
	}
	e.withMounted("app", func(root string) {
		if got := readFile(t, filepath.Join(root, "seen")); got != "1\n" {
			t.Errorf("/seen = %q: the base's environment did not reach the build", got)
		}
	})
	if _, err := e.build(rec, opt, nil); err != nil {
		t.Fatal(err)
	}
	for _, ev := range e.events {
		if ev.Status == StatusBase && strings.HasPrefix(ev.Message, "convert") || ev.Status == StatusRun {
			t.Errorf("second build: %+v", ev)
		}
	}
}

// TestLayerProgress: a build's layer step reports the filesystem image's
// bytes as they are written and then its hashing, after the step's
// StatusLayer event, ending with all of it hashed.
func TestLayerProgress(t *testing.T) {
	e := newEnv(t)
	opt := e.options()
	var (
		mu      sync.Mutex
		written []int64
		hashed  [][2]int64
		layerAt = -1
	)
	progress := opt.Progress
	opt.Progress = func(ev Event) {
		progress(ev)
		mu.Lock()
		defer mu.Unlock()
		if ev.Status == StatusLayer && layerAt < 0 {
			layerAt = len(written) + len(hashed)
		}
	}
	opt.Written = func(n int64) { mu.Lock(); written = append(written, n); mu.Unlock() }
	opt.Hashed = func(done, total int64) { mu.Lock(); hashed = append(hashed, [2]int64{done, total}); mu.Unlock() }
	if _, err := e.build(baseRecipe, opt, nil); err != nil {
		t.Fatal(err, e.out.String())
	}
	if layerAt != 0 || len(written) == 0 || len(hashed) == 0 {
		t.Fatalf("layer event after %d reports; written %v, hashed %v", layerAt, written, hashed)
	}
	if written[len(written)-1] <= 0 {
		t.Errorf("written %v", written)
	}
	if end := hashed[len(hashed)-1]; end[0] != end[1] || end[1] < 2*written[len(written)-1] {
		t.Errorf("last hash report %v: want all of at least twice the %d bytes written", end, written[len(written)-1])
	}
}

// TestDestImportMTimes: a dest: import keeps its file's mtime in the
// image (as stacker's do); with SOURCE_DATE_EPOCH every time is that.
func TestDestImportMTimes(t *testing.T) {
	e := newEnv(t)
	e.write(map[string]string{"data/conf": "c\n", "data/dir/f": "f\n"})
	old := time.Unix(1600000000, 0)
	for _, p := range []string{"data/conf", "data/dir/f", "data/dir"} {
		if err := os.Chtimes(filepath.Join(e.dir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	recipe := `
app:
  from: {type: scratch}
  imports:
    - path: data/conf
      dest: /etc/
    - path: data/dir
      dest: /srv/
`
	opt := e.options()
	opt.SourceDateEpoch = nil
	if _, err := e.build(recipe, opt, nil); err != nil {
		t.Fatal(err, e.out.String())
	}
	e.withMounted("app", func(root string) {
		for _, p := range []string{"etc/conf", "srv/dir/f", "srv/dir"} {
			fi, err := os.Lstat(filepath.Join(root, p))
			if err != nil {
				t.Fatal(err)
			}
			if !fi.ModTime().Equal(old) {
				t.Errorf("/%s: mtime %v, want the source's %v", p, fi.ModTime(), old)
			}
		}
	})
}
