package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func parse(t *testing.T, text string, subs map[string]string) (*File, error) {
	t.Helper()
	return Parse("vessel.yaml", []byte(text), Options{Substitutions: subs, Dir: "/recipes"})
}

func mustParse(t *testing.T, text string, subs map[string]string) *File {
	t.Helper()
	f, err := parse(t, text, subs)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return f
}

func TestParseEveryKey(t *testing.T) {
	f := mustParse(t, `
base:
  from: {type: scratch}
app:
  from:
    type: built
    tag: base
  imports:
    - files/a.txt
    - path: /abs/dir/
      dest: /opt/
      mode: 0640
      uid: 10
      gid: 20
      hash: SHA256:`+strings.Repeat("AB", 32)+`
  run: |
    echo one
    echo two
  environment: {A: "1", B: 2, C: }
  build_env: {X: y}
  labels: {l: v}
  annotations: {a: b}
  entrypoint: /bin/sh -c 'echo "hi there"'
  cmd: [x, y]
  working_dir: /w
  volumes: [/v1, /v2]
  runtime_user: nobody
  build_only: true
  arch: aarch64
  os: linux
tarbase:
  from:
    type: tar
    url: rootfs.tar
    hash: sha256:`+strings.Repeat("CD", 32)+`
`, nil)
	app := f.Image("app")
	if app == nil || len(f.Images) != 3 || f.Images[0].Name != "base" {
		t.Fatalf("images: %+v", f.Images)
	}
	mode := fs.FileMode(0o640)
	uid, gid := 10, 20
	want := &Image{
		Name: "app", Line: 4, From: From{Type: Built, Tag: "base", Line: 6},
		Imports: []Import{
			{Path: "files/a.txt", Source: "/recipes/files/a.txt", Line: 9},
			{Path: "/abs/dir/", Source: "/abs/dir/", Dest: "/opt/", Mode: &mode, UID: &uid, GID: &gid, Hash: strings.Repeat("ab", 32), Line: 10},
		},
		Run:         []string{"echo one\necho two\n"},
		Environment: map[string]string{"A": "1", "B": "2", "C": ""},
		BuildEnv:    map[string]string{"X": "y"},
		Labels:      map[string]string{"l": "v"},
		Annotations: map[string]string{"a": "b"},
		Entrypoint:  []string{"/bin/sh", "-c", `echo "hi there"`},
		Cmd:         []string{"x", "y"},
		WorkingDir:  "/w", Volumes: []string{"/v1", "/v2"}, RuntimeUser: "nobody", BuildOnly: true,
		OS: "linux", Arch: "arm64", ArchLine: 29,
	}
	app.keyLines, app.file = nil, ""
	if !reflect.DeepEqual(app, want) {
		t.Errorf("got  %+v\nwant %+v", app, want)
	}
	if f.Images[0].Arch != runtime.GOARCH {
		t.Errorf("default arch %q", f.Images[0].Arch)
	}
	if tb := f.Image("tarbase").From; tb.Hash != strings.Repeat("cd", 32) || tb.URL != "/recipes/rootfs.tar" {
		t.Errorf("tar base with hash: %+v", tb)
	}
}

func TestParseRunForms(t *testing.T) {
	for _, tc := range []struct{ run, script string }{
		{"run: echo hi", DefaultShebang + "\necho hi\n"},
		{"run: [a, b]", DefaultShebang + "\na\nb\n"},
		{"run:\n    - a\n    - b c", DefaultShebang + "\na\nb c\n"},
		{"run: |\n    #!/bin/bash\n    a\n", "#!/bin/bash\na\n"},
		{"run: []", ""},
		{"run:", ""},
	} {
		f := mustParse(t, "x:\n  from: {type: scratch}\n  "+tc.run+"\n", nil)
		if got := f.Images[0].Script(); got != tc.script {
			t.Errorf("%q: script %q, want %q", tc.run, got, tc.script)
		}
	}
}

func TestParseSubstitutions(t *testing.T) {
	text := "${{NAME}}:\n  from: {type: docker, url: \"docker://${{REG:docker.io}}/x:${{TAG:}}1\"}\n  run: echo ${{MSG:hello world}} $HOME ${PATH}\n"
	f := mustParse(t, text, map[string]string{"NAME": "img", "TAG": "v"})
	img := f.Image("img")
	if img == nil || img.From.URL != "docker://docker.io/x:v1" || img.Run[0] != "echo hello world $HOME ${PATH}" {
		t.Fatalf("got %+v", f.Images[0])
	}
	f = mustParse(t, text, map[string]string{"NAME": "img", "REG": "r:5000", "MSG": "bye"})
	if img := f.Image("img"); img.From.URL != "docker://r:5000/x:1" || img.Run[0] != "echo bye $HOME ${PATH}" {
		t.Fatalf("got %+v", img)
	}
	// A value with newlines does not shift the lines errors report.
	_, err := parse(t, "a:\n  run: ${{MULTI}}\n  from: {type: scratch}\n  bogus: 1\n", map[string]string{"MULTI": "|\n    x\n    y"})
	var e *Error
	if !errors.As(err, &e) || e.Line != 4 {
		t.Fatalf("error %v, want line 4", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		kind       error
		line       int
		contains   []string
	}{
		{"undefined", "a:\n  from: {type: scratch}\n  run: ${{NOPE}}\n", ErrUndefined, 3, []string{"NOPE (line 3)", "substitute a value"}},
		{"unknown key", "a:\n  from: {type: scratch}\n  rnu: x\n", ErrUnknownKey, 3, []string{`image "a"`, `unknown key "rnu"`, "vessel.yaml:3"}},
		{"unknown from key", "a:\n  from: {type: scratch, urll: x}\n", ErrUnknownKey, 2, []string{`"urll"`}},
		{"stacker only", "a:\n  from: {type: scratch}\n  apply: [docker://x]\n", ErrUnknownKey, 3, []string{"not supported by vessel"}},
		{"bind relative dest", "a:\n  from: {type: scratch}\n  binds:\n    - /x -> rel\n", ErrSyntax, 4, []string{"binds.dest", "absolute"}},
		{"bind over proc", "a:\n  from: {type: scratch}\n  binds:\n    - /x -> /proc/x\n", ErrSyntax, 4, []string{"/proc/x"}},
		{"bind unknown key", "a:\n  from: {type: scratch}\n  binds:\n    - {source: /x, target: /y}\n", ErrUnknownKey, 4, []string{`"target"`}},
		{"bind no source", "a:\n  from: {type: scratch}\n  binds:\n    - {dest: /y}\n", ErrSyntax, 4, []string{"needs a source"}},
		{"binds not a list", "a:\n  from: {type: scratch}\n  binds: /x\n", ErrSyntax, 3, []string{"list of binds"}},
		{"overlay dir no source", "a:\n  from: {type: scratch}\n  overlay_dirs:\n    - {dest: /y}\n", ErrSyntax, 4, []string{"needs source"}},
		{"overlay dir relative dest", "a:\n  from: {type: scratch}\n  overlay_dirs:\n    - {source: d, dest: y}\n", ErrSyntax, 4, []string{"absolute"}},
		{"unknown config key", "config: {prereqs: []}\na:\n  from: {type: scratch}\n", ErrUnknownKey, 1, []string{`"prereqs"`}},
		{"run mapping", "a:\n  from: {type: scratch}\n  run: {x: y}\n", ErrSyntax, 3, []string{"run", "a mapping"}},
		{"run nested list", "a:\n  from: {type: scratch}\n  run:\n    - [x]\n", ErrSyntax, 4, []string{"run"}},
		{"env list", "a:\n  from: {type: scratch}\n  environment: [A=1]\n", ErrSyntax, 3, []string{"environment must be a mapping"}},
		{"bool", "a:\n  from: {type: scratch}\n  build_only: maybe\n", ErrSyntax, 3, []string{"true or false"}},
		{"mode", "a:\n  from: {type: scratch}\n  imports:\n    - path: x\n      mode: rwx\n", ErrSyntax, 5, []string{"mode"}},
		{"hash", "a:\n  from: {type: scratch}\n  imports:\n    - path: x\n      hash: abc\n", ErrSyntax, 5, []string{"sha256"}},
		{"from hash", "a:\n  from:\n    type: tar\n    url: /r.tar\n    hash: abc\n", ErrSyntax, 5, []string{"from.hash", "sha256"}},
		{"from hash not tar", "a:\n  from:\n    type: scratch\n    hash: " + strings.Repeat("a", 64) + "\n", ErrSyntax, 4, []string{"from.hash", "type tar"}},
		{"relative dest", "a:\n  from: {type: scratch}\n  imports:\n    - {path: x, dest: rel}\n", ErrSyntax, 4, []string{"absolute"}},
		{"arch", "a:\n  from: {type: scratch}\n  arch: vax\n", ErrSyntax, 3, []string{`"vax"`, "amd64"}},
		{"os", "a:\n  from: {type: scratch}\n  os: windows\n", ErrSyntax, 3, []string{"linux"}},
		{"no from", "a:\n  run: x\n", ErrSyntax, 1, []string{"missing from"}},
		{"no type", "a:\n  from: {url: x}\n", ErrSyntax, 2, []string{"missing type"}},
		{"bad type", "a:\n  from:\n    type: ubuntu\n", ErrSyntax, 3, []string{`"ubuntu"`}},
		{"oci no tag", "a:\n  from: {type: oci, url: /x/y}\n", ErrSyntax, 2, []string{"DIR:TAG"}},
		{"docker no scheme", "a:\n  from: {type: docker, url: ubuntu:22.04}\n", ErrSyntax, 2, []string{"docker://"}},
		{"docker bad repo", "a:\n  from: {type: docker, url: docker://reg.example.com/Ubuntu:22.04}\n", ErrSyntax, 2, []string{"docker://", "lower case"}},
		{"docker tag and digest", "a:\n  from: {type: docker, url: \"docker://ubuntu:22.04@sha256:" + strings.Repeat("a", 64) + "\"}\n", ErrSyntax, 2, []string{"a tag and a digest"}},
		{"docker other transport", "a:\n  from: {type: docker, url: \"docker-daemon:busybox:latest\"}\n", ErrSyntax, 2, []string{`unsupported transport "docker-daemon"`}},
		{"docker archive", "a:\n  from: {type: docker, url: \"docker-archive:/tmp/x.tar\"}\n", ErrSyntax, 2, []string{"type docker needs url: docker://", `"docker-archive:/tmp/x.tar"`}},
		{"oci bad tag", "a:\n  from: {type: oci, url: \"/x/y:bad tag\"}\n", ErrSyntax, 2, []string{`layout tag "bad tag"`}},
		{"upper-case name", "Web:\n  from: {type: scratch}\n", ErrSyntax, 1, []string{`image name "Web" is not a store name`, "lower case", "build_only"}},
		{"built no tag", "a:\n  from: {type: built}\n", ErrSyntax, 2, []string{"tag"}},
		{"missing built base", "a:\n  from: {type: built, tag: nope}\n", ErrMissingBase, 2, []string{`"nope"`, "images: a"}},
		{"missing stacker import", "a:\n  from: {type: scratch}\n  imports: [stacker://nope/x]\n", ErrMissingBase, 3, []string{`"nope"`}},
		{"self", "a:\n  from: {type: built, tag: a}\n", ErrCycle, 2, []string{"itself"}},
		{"tar stacker unknown", "a:\n  from:\n    type: tar\n    url: stacker://nope/x.tar\n", ErrMissingBase, 3, []string{`"nope"`, "stacker://nope/x.tar"}},
		{"tar stacker no path", "a:\n  from:\n    type: tar\n    url: stacker://b\nb:\n  from: {type: scratch}\n", ErrSyntax, 3, []string{"stacker://IMAGE/PATH"}},
		{"tar stacker self", "a:\n  from: {type: tar, url: stacker://a/x.tar}\n", ErrCycle, 2, []string{"inside itself"}},
		{"tar other scheme", "a:\n  from: {type: tar, url: ftp://x/y.tar}\n", ErrSyntax, 2, []string{"ftp://x/y.tar"}},
		{"cycle", "a:\n  from: {type: built, tag: c}\nb:\n  from: {type: built, tag: a}\nc:\n  from: {type: scratch}\n  imports: [stacker://b/x]\n", ErrCycle, 1, []string{"a -> c -> b -> a"}},
		{"duplicate image", "a:\n  from: {type: scratch}\nb:\n  from: {type: scratch}\na:\n  from: {type: scratch}\n", ErrDuplicate, 5, []string{"lines 1 and 5"}},
		{"duplicate key", "a:\n  from: {type: scratch}\n  run: x\n  run: y\n", ErrDuplicate, 4, []string{"lines 3 and 4"}},
		{"full_command conflict", "a:\n  from: {type: scratch}\n  entrypoint: x\n  full_command: y\n", ErrSyntax, 1, []string{"full_command", "line 4"}},
		{"import and imports", "a:\n  from: {type: scratch}\n  import: [x]\n  imports: [y]\n", ErrSyntax, 4, []string{"not both"}},
		{"bad yaml", "a:\n  from: [\n", ErrSyntax, 2, []string{"not valid YAML"}},
		{"empty", "", ErrSyntax, 0, []string{"no images"}},
		{"not a map", "- a\n", ErrSyntax, 1, []string{"must be a mapping"}},
		{"bad name", "\"a b\":\n  from: {type: scratch}\n", ErrSyntax, 1, []string{"bad image name"}},
		{"unterminated quote", "a:\n  from: {type: scratch}\n  cmd: echo 'x\n", ErrSyntax, 3, []string{"unterminated"}},
		{"url import", "a:\n  from: {type: scratch}\n  imports: [ftp://x/y]\n", ErrSyntax, 3, []string{"ftp://"}},
		{"bad var name", "a:\n  from: {type: scratch}\n  run: ${{A-B}}\n", ErrSyntax, 3, []string{"bad substitution"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.text, nil)
			if err == nil {
				t.Fatal("parsed")
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %v is not %v", err, tc.kind)
			}
			var e *Error
			if !errors.As(err, &e) || e.Line != tc.line {
				t.Errorf("error %v: want line %d", err, tc.line)
			}
			for _, s := range tc.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// binds in stacker's string and struct forms, and overlay_dirs as imports
// with dest.
func TestParseBindsAndOverlayDirs(t *testing.T) {
	f := mustParse(t, `
a:
  from: {type: scratch}
  binds:
    - /host/cache -> /root/.cache
    - /srv/data
    - rel/dir ->/mnt
    - source: /etc/resolv.conf
      dest: /etc/resolv.conf
    - {source: /x/}
  overlay_dirs:
    - source: overlay
      dest: /usr/local
    - source: /abs/root-overlay
`, nil)
	img := f.Image("a")
	want := []HostBind{
		{Source: "/host/cache", Dest: "/root/.cache", Line: 5},
		{Source: "/srv/data", Dest: "/srv/data", Line: 6},
		{Source: "/recipes/rel/dir", Dest: "/mnt", Line: 7},
		{Source: "/etc/resolv.conf", Dest: "/etc/resolv.conf", Line: 8},
		{Source: "/x", Dest: "/x", Line: 10},
	}
	if !reflect.DeepEqual(img.Binds, want) {
		t.Errorf("binds:\n got %+v\nwant %+v", img.Binds, want)
	}
	if len(img.Imports) != 2 {
		t.Fatalf("overlay_dirs: %+v", img.Imports)
	}
	if i := img.Imports[0]; i.Source != "/recipes/overlay/" || i.Dest != "/usr/local/" || i.Line != 12 {
		t.Errorf("overlay dir 1: %+v", i)
	}
	if i := img.Imports[1]; i.Source != "/abs/root-overlay/" || i.Dest != "/" {
		t.Errorf("overlay dir 2 (dest defaults to /): %+v", i)
	}
	// A bind change changes the layer key; the same binds give the same key.
	key := func(text string) digest.Digest {
		t.Helper()
		k, err := Key(mustParse(t, text, nil).Image("a"), KeyOptions{LayerType: "squashfs"})
		if err != nil {
			t.Fatal(err)
		}
		return k.Layer
	}
	k1 := key("a:\n  from: {type: scratch}\n  run: x\n  binds: [/a -> /b]\n")
	if k1 != key("a:\n  from: {type: scratch}\n  run: x\n  binds: [{source: /a, dest: /b}]\n") {
		t.Error("the two forms of one bind give different keys")
	}
	if k1 == key("a:\n  from: {type: scratch}\n  run: x\n  binds: [/a -> /c]\n") {
		t.Error("a changed bind dest keeps the key")
	}
	if key("a:\n  from: {type: scratch}\n  run: x\n") != key("a:\n  from: {type: scratch}\n  run: x\n  binds: []\n") {
		t.Error("an empty binds list changes the key")
	}
}

// An unknown key in an import (stacker's perms, say) is a warning that
// names its line, not an error: stacker ignores it.
func TestParseUnknownImportKeyWarns(t *testing.T) {
	f := mustParse(t, "a:\n  from: {type: scratch}\n  imports:\n    - path: x\n      perms: 0644\n", nil)
	if len(f.Warnings) != 1 {
		t.Fatalf("warnings: %v", f.Warnings)
	}
	if w := f.Warnings[0].Error(); !strings.Contains(w, "vessel.yaml:5") || !strings.Contains(w, `"perms"`) || !strings.Contains(w, "ignored") {
		t.Errorf("warning %q", w)
	}
	if len(f.Images[0].Imports) != 1 || f.Images[0].Imports[0].Source != "/recipes/x" {
		t.Errorf("import: %+v", f.Images[0].Imports)
	}
}

// A tar base inside an image built earlier: the image is a dependency.
func TestParseTarFromImage(t *testing.T) {
	f := mustParse(t, "final:\n  from: {type: tar, url: stacker://maker/out/rootfs.tar}\nmaker:\n  from: {type: scratch}\n  build_only: true\n", nil)
	from := f.Image("final").From
	if from.FromImage != "maker" || from.ImagePath != "/out/rootfs.tar" {
		t.Errorf("from = %+v", from)
	}
	plan, err := f.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Steps) != 2 || plan.Steps[0].Image.Name != "maker" {
		t.Errorf("plan does not build maker first: %+v", plan.Steps)
	}
}

func TestParseReportsSeveralErrors(t *testing.T) {
	_, err := parse(t, "a:\n  from: {type: scratch}\n  x: 1\nb:\n  from: {type: scratch}\n  y: 2\n", nil)
	if err == nil || !strings.Contains(err.Error(), `"x"`) || !strings.Contains(err.Error(), `"y"`) {
		t.Fatalf("want both unknown keys, got %v", err)
	}
}

func TestParseStackerExamples(t *testing.T) {
	dir, _ := filepath.Abs("testdata")
	parseEx := func(name string, subs map[string]string) *File {
		t.Helper()
		f, err := ParseFile(filepath.Join("testdata", name), Options{Substitutions: subs})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return f
	}

	f := parseEx("stacker-multistage.yaml", map[string]string{"VERSION": "2.1"})
	if got := imageNames(f); !reflect.DeepEqual(got, []string{"common", "build", "hello"}) {
		t.Fatalf("images %v", got)
	}
	if want := []string{filepath.Join(filepath.Dir(dir), "base", "stacker.yaml")}; !reflect.DeepEqual(f.Prerequisites, want) {
		t.Errorf("prerequisites %v, want %v", f.Prerequisites, want)
	}
	build := f.Image("build")
	if build.From.Type != OCI || build.From.URL != filepath.Join(dir, "oci-layout")+":base" || !build.BuildOnly || build.Environment["LANG"] != "C.UTF-8" {
		t.Errorf("build (merged from the anchor): %+v", build)
	}
	if d, tag := build.From.Layout(); d != filepath.Join(dir, "oci-layout") || tag != "base" {
		t.Errorf("layout %q %q", d, tag)
	}
	if build.Imports[0].Source != dir+"/src/" {
		t.Errorf("dir import %q keeps no trailing slash", build.Imports[0].Source)
	}
	hello := f.Image("hello")
	if !hello.LegacyImport || hello.Imports[0].FromImage != "build" || hello.Imports[0].ImagePath != "/out/bin/hello" {
		t.Errorf("hello imports %+v", hello.Imports)
	}
	if !reflect.DeepEqual(hello.FullCommand, []string{"/usr/bin/hello", "--config", "/etc/hello/hello.conf"}) || hello.Arch != "amd64" {
		t.Errorf("hello %+v", hello)
	}
	if hello.Labels["org.opencontainers.image.version"] != "2.1" {
		t.Errorf("labels %v", hello.Labels)
	}
	p, err := f.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Names(); !reflect.DeepEqual(got, []string{"common", "build", "hello"}) {
		t.Errorf("plan %v", got)
	}
	if p.Steps[1].Tag || !p.Steps[2].Tag {
		t.Errorf("build_only: %+v", p.Steps)
	}

	f = parseEx("stacker-docker.yaml", nil)
	c := f.Image("centos")
	if c.From.URL != "docker://docker.io/library/centos:8" || !reflect.DeepEqual(c.Entrypoint, []string{"/usr/sbin/nginx"}) || c.Environment["http_proxy"] != "" {
		t.Errorf("centos %+v", c)
	}
	if tb := f.Image("tarball"); tb.From.URL != filepath.Join(dir, "rootfs.tar.gz") || tb.BuildEnv["DEBIAN_FRONTEND"] != "noninteractive" {
		t.Errorf("tarball %+v", tb)
	}

	f = parseEx("stacker-scratch.yaml", nil)
	if s := f.Image("static"); s.Imports[0].Dest != "/usr/bin/hello" || *s.Imports[0].Mode != 0o755 {
		t.Errorf("static %+v", s.Imports)
	}
}

func TestParseExample(t *testing.T) {
	f, err := ParseFile("../../examples/vessel.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := f.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Names(); !reflect.DeepEqual(got, []string{"base", "app"}) {
		t.Fatalf("plan %v", got)
	}
	base, app := f.Image("base"), f.Image("app")
	if base.From.Type != Scratch || base.Imports[0].Source != "/bin/busybox" || !strings.HasPrefix(base.Script(), "#!/stacker/imports/busybox sh\n") {
		t.Errorf("base %+v", base)
	}
	if app.From.Tag != "base" || !reflect.DeepEqual(app.Cmd, []string{"/bin/httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"}) {
		t.Errorf("app %+v", app)
	}
	abs, _ := filepath.Abs("../../examples/www/index.html")
	if app.Imports[0].Source != abs {
		t.Errorf("app import %q, want %q", app.Imports[0].Source, abs)
	}
	// app's import is in the repository, so its key can be computed here.
	if _, err := Key(app, KeyOptions{BaseDigest: digest.Digest("sha256:" + strings.Repeat("0", 64)), LayerType: "squashfs"}); err != nil {
		t.Errorf("key app: %v", err)
	}
}

func TestPlanOnly(t *testing.T) {
	f := mustParse(t, `
a: {from: {type: scratch}}
b: {from: {type: built, tag: d}}
c: {from: {type: scratch}}
d: {from: {type: built, tag: a}, imports: ["stacker://c/x"]}
e: {from: {type: built, tag: a}}
`, nil)
	for _, tc := range []struct {
		only []string
		want []string
	}{
		{nil, []string{"a", "c", "d", "b", "e"}},
		{[]string{"b"}, []string{"a", "c", "d", "b"}},
		{[]string{"e"}, []string{"a", "e"}},
		{[]string{"c", "e"}, []string{"a", "c", "e"}},
	} {
		p, err := f.Plan(tc.only...)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Names(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("--only %v: %v, want %v", tc.only, got, tc.want)
		}
	}
	if _, err := f.Plan("zz"); err == nil || !strings.Contains(err.Error(), "images: a, b, c, d, e") {
		t.Errorf("unknown --only: %v", err)
	}
	if got := f.Image("d").Needs(); !reflect.DeepEqual(got, []string{"a", "c"}) {
		t.Errorf("needs %v", got)
	}
}

func TestSplitWords(t *testing.T) {
	for in, want := range map[string][]string{
		`a b  c`:               {"a", "b", "c"},
		`'a b' "c \"d\"" e\ f`: {"a b", `c "d"`, "e f"},
		`x''y ""`:              {"xy", ""},
		``:                     nil,
	} {
		got, err := splitWords(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
}

func TestParseSubstitutionFlags(t *testing.T) {
	m, err := ParseSubstitutions([]string{"A=1", "B=x=y", "A=2"})
	if err != nil || !reflect.DeepEqual(m, map[string]string{"A": "2", "B": "x=y"}) {
		t.Errorf("%v %v", m, err)
	}
	if _, err := ParseSubstitutions([]string{"novalue"}); err == nil {
		t.Error("accepted KEY without =")
	}
}

// An oci base's URL is split at the first colon, as stacker
// (types.ImageSource.ParseTag: strings.SplitN(url, ":", 2)) and skopeo
// split oci: references, so the tag may contain colons; an upper-case image
// name is fine when the image is never tagged.
func TestParseLayoutSplit(t *testing.T) {
	f, err := parse(t, "Builder:\n  build_only: true\n  from: {type: oci, url: \"lay:b/v1:x\"}\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, tag := f.Image("Builder").From.Layout()
	if filepath.Base(dir) != "lay" || tag != "b/v1:x" {
		t.Errorf("split %q %q, want dir lay and tag b/v1:x", dir, tag)
	}
}

// Substitution cannot grow a recipe past MaxSize: the limit holds while
// values are substituted (a 4 KiB recipe with a 1 MiB value used 10,000
// times is refused without building the 10 GiB text).
func TestParseSubstitutionBomb(t *testing.T) {
	text := "a:\n  from: {type: scratch}\n  run: echo " + strings.Repeat("${{X}}", 10000) + "\n"
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := parse(t, text, map[string]string{"X": strings.Repeat("x", 1<<20)})
	runtime.ReadMemStats(&after)
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), fmt.Sprintf("after substitution the recipe is larger than %d bytes", MaxSize)) || e.Line != 3 {
		t.Fatalf("err = %v, want a size error at line 3", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 256<<20 {
		t.Errorf("%d bytes allocated to refuse it", got)
	}
}

// A recipe file is size-limited while it is read: /dev/zero is refused.
func TestLoadFileRefusesEndlessInput(t *testing.T) {
	_, err := LoadFile("/dev/zero", Options{})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("/dev/zero: larger than %d bytes", MaxSize)) {
		t.Fatalf("err = %v", err)
	}
}

// stacker's --substitute-file: a YAML mapping; bad input names the line.
func TestReadSubstituteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "subs.yaml")
	os.WriteFile(p, []byte("VERSION: 1.2\nNAME: web\nDEBUG: true\n"), 0o644)
	m, err := ReadSubstituteFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, map[string]string{"VERSION": "1.2", "NAME": "web", "DEBUG": "true"}) {
		t.Errorf("got %v", m)
	}
	f := mustParse(t, "${{NAME}}:\n  from: {type: scratch}\n  labels: {v: \"${{VERSION}}\"}\n", m)
	if f.Images[0].Name != "web" || f.Images[0].Labels["v"] != "1.2" {
		t.Errorf("substituted: %+v", f.Images[0])
	}
	for text, want := range map[string]string{
		"- a\n":             "subs.yaml:1: want a mapping",
		"A: 1\nB-C: 2\n":    `subs.yaml:2: "B-C" is not a variable name`,
		"A: 1\nB: [x, y]\n": "subs.yaml:2: B: want a string value",
	} {
		os.WriteFile(p, []byte(text), 0o644)
		if _, err := ReadSubstituteFile(p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
	if _, err := ReadSubstituteFile(filepath.Join(dir, "nope.yaml")); err == nil || !strings.Contains(err.Error(), "substitute file") {
		t.Errorf("missing file: %v", err)
	}
}

// Section is an image's own text, as written: what stacker_yaml carries.
func TestSection(t *testing.T) {
	text := "# a recipe\na:\n  from: {type: scratch}\n  # comment\n  run: echo ${{X:1}}\n\nb:\n  from:\n    type: built\n    tag: a\n\n\nconfig:\n  prerequisites: []\n"
	f, err := Parse("vessel.yaml", []byte(text), Options{Dir: "/recipes"})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Section(f.Image("a")); got != "a:\n  from: {type: scratch}\n  # comment\n  run: echo ${{X:1}}\n" {
		t.Errorf("a: %q", got)
	}
	if got := f.Section(f.Image("b")); got != "b:\n  from:\n    type: built\n    tag: a\n" {
		t.Errorf("b: %q", got)
	}
}

// The docker URL forms stacker accepts parse.
func TestParseDockerForms(t *testing.T) {
	for _, u := range []string{"docker://ubuntu:latest", "docker://ubuntu", "docker://docker.io/library/ubuntu:22.04",
		"docker://localhost:5000/repo/x:tag", "docker://127.0.0.1:5000/a@sha256:" + strings.Repeat("01", 32), "docker://quay.io/org/img"} {
		if _, err := parse(t, "a:\n  from: {type: docker, url: \""+u+"\"}\n", nil); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}
