package recipe

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStage(t *testing.T) {
	dir, _ := keyFixture(t)
	if err := os.WriteFile(filepath.Join(dir, "conf"), []byte("c"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := `img:
  from: {type: scratch}
  imports:
    - bin/tool
    - tree
    - path: conf
      dest: /etc/app/
      mode: 0640
      uid: 7
    - path: tree/
      dest: /srv
  run: |
    #!/stacker/imports/tool
    go
`
	f, err := Parse(filepath.Join(dir, "vessel.yaml"), []byte(text), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// dest: imports keep their files' mtimes (as stacker's do), but none
	// later than ImageMTimeMax; what only the build sees gets MTime.
	epoch := time.Unix(1700000000, 0)
	old, older, later := time.Unix(1600000000, 0), time.Unix(1500000000, 0), time.Unix(1800000000, 0)
	for p, tm := range map[string]time.Time{"conf": old, "tree/a.txt": older, "tree/sub/b.txt": later, "tree/sub": old} {
		if err := os.Chtimes(filepath.Join(dir, p), tm, tm); err != nil {
			t.Fatal(err)
		}
	}
	maxKept := time.Unix(1750000000, 0)
	wantTime := map[string]time.Time{"rootfs/etc/app/conf": old, "rootfs/srv/a.txt": older, "rootfs/srv/sub/b.txt": maxKept, "rootfs/srv/sub": old}
	out := filepath.Join(t.TempDir(), "stage")
	st, err := Stage(f.Images[0], out, StageOptions{MTime: epoch, ImageMTimeMax: maxKept})
	if err != nil {
		t.Fatal(err)
	}
	check := func(p string, mode os.FileMode, content string) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(out, p))
		if err != nil {
			t.Error(err)
			return
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), mode)
		}
		want, ok := wantTime[p]
		if !ok {
			want = epoch
		}
		if !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %v, want %v", p, fi.ModTime(), want)
		}
		if content != "" {
			b, _ := os.ReadFile(filepath.Join(out, p))
			if string(b) != content {
				t.Errorf("%s: %q", p, b)
			}
		}
	}
	check("stacker/imports/tool", 0o755, "#!/bin/sh\necho tool\n")
	check("stacker/imports/tree", os.ModeDir|0o755, "")
	check("stacker/imports/tree/sub/b.txt", 0o600, "b")
	check("stacker/imports/tree/link", os.ModeSymlink|0o777, "")
	check("rootfs/etc/app/conf", 0o640, "c")
	check("rootfs/etc", os.ModeDir|0o755, "")
	check("rootfs/srv/a.txt", 0o644, "a")
	check("rootfs/srv/sub/b.txt", 0o600, "b")
	check("rootfs/srv/sub", os.ModeDir|0o755, "")
	check("stacker/.vessel-run.sh", 0o755, "#!/stacker/imports/tool\ngo\n")
	if l, _ := os.Readlink(filepath.Join(out, "vessel/imports")); l != "../stacker/imports" {
		t.Errorf("vessel/imports -> %q", l)
	}
	if b, err := os.ReadFile(filepath.Join(out, "vessel/imports/tool")); err != nil || !strings.Contains(string(b), "echo tool") {
		t.Errorf("/vessel/imports does not show the imports: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "stacker/imports/conf")); err == nil {
		t.Error("a dest import is also in /stacker/imports")
	}
	if len(st.Chowns) != 1 || st.Chowns[0].ContainerPath != "/etc/app/conf" || st.Chowns[0].UID != 7 || st.Chowns[0].GID != -1 {
		t.Errorf("chowns %+v", st.Chowns)
	}
	if st.Script != filepath.Join(out, "stacker/.vessel-run.sh") || len(st.Mounts) != 2 || st.Mounts[0].Destination != "/stacker" {
		t.Errorf("staged %+v", st)
	}

	// Staging again into a used directory is refused.
	if _, err := Stage(f.Images[0], out, StageOptions{}); err == nil {
		t.Error("staged into a non-empty directory")
	}
}

func TestStageLegacyImport(t *testing.T) {
	dir, _ := keyFixture(t)
	f, err := Parse(filepath.Join(dir, "vessel.yaml"), []byte("img:\n  from: {type: scratch}\n  import: [bin/tool]\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "s")
	if _, err := Stage(f.Images[0], out, StageOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "stacker/tool")); err != nil || !strings.Contains(string(b), "echo tool") {
		t.Errorf("legacy import not under /stacker: %v", err)
	}
}

func TestStageErrors(t *testing.T) {
	dir, _ := keyFixture(t)
	for name, tc := range map[string]string{
		"missing":   "[nothere]",
		"remote":    "[http://example.com/x]",
		"collision": "[bin/tool, {path: tree/a.txt, dest: /x}, other/tool]",
		"hash":      "[{path: bin/tool, hash: " + strings.Repeat("0", 64) + "}]",
		"stacker":   "[stacker://a/x]",
	} {
		t.Run(name, func(t *testing.T) {
			if name == "collision" {
				os.MkdirAll(filepath.Join(dir, "other"), 0o755)
				os.WriteFile(filepath.Join(dir, "other/tool"), nil, 0o644)
			}
			text := "a:\n  from: {type: scratch}\nimg:\n  from: {type: scratch}\n  imports: " + tc + "\n"
			f, err := Parse(filepath.Join(dir, "vessel.yaml"), []byte(text), Options{})
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "s")
			_, err = Stage(f.Image("img"), out, StageOptions{})
			if err == nil || !strings.Contains(err.Error(), "vessel.yaml:5") {
				t.Fatalf("error %v does not name line 5", err)
			}
			if _, serr := os.Stat(out); name == "hash" && serr == nil {
				t.Error("failed staging left its directory")
			}
		})
	}
	// stacker:// with a resolver reads from the path it returns.
	f, _ := Parse(filepath.Join(dir, "vessel.yaml"), []byte("a:\n  from: {type: scratch}\nimg:\n  from: {type: scratch}\n  imports: [stacker://a/tree/sub]\n"), Options{})
	out := filepath.Join(t.TempDir(), "s")
	resolve := func(image, p string) (string, error) { return filepath.Join(dir, p), nil }
	if _, err := Stage(f.Image("img"), out, StageOptions{Resolve: resolve}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "stacker/imports/sub/b.txt")); err != nil {
		t.Error(err)
	}
}
