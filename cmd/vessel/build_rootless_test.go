package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// rootlessRecipe is examples/vessel.yaml plus an image that deletes a file
// and replaces a directory of its base (a whiteout and an opaque
// directory), and one that imports with uid/gid/mode.
const rootlessRecipe = `
extra:
  from: {type: built, tag: app}
  imports:
    - path: www/index.html
      dest: /srv/owned.html
      mode: 0640
      uid: 1000
      gid: 1000
  run: |
    rm /etc/group
    rm -r /www
    mkdir /www
    echo replaced > /www/index.html
    chown 1000:1000 /www
`

// TestBuildRootlessSameDigests builds the example recipe (plus whiteouts,
// an opaque directory and owned files) as root and as a throwaway
// unprivileged user with subordinate ids, on clean stores, and wants the
// same image digests.
func TestBuildRootlessSameDigests(t *testing.T) {
	r := newRootlessEnv(t, []string{"squashfuse", "mksquashfs", "runc"}, "/bin/busybox")
	tmp, bin := r.tmp, r.bin
	src, err := os.ReadFile("../../examples/vessel.yaml")
	must(t, err)
	html, err := os.ReadFile("../../examples/www/index.html")
	must(t, err)
	rdir := filepath.Join(tmp, "recipe")
	writeTree(t, rdir, map[string]string{"vessel.yaml": string(src) + rootlessRecipe, "www/index.html": string(html)})
	recipe := filepath.Join(rdir, "vessel.yaml")

	digests := func(out []byte) map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
			var ev struct {
				Event  string `json:"event"`
				Images []struct {
					Name       string `json:"name"`
					Descriptor struct {
						Digest string `json:"digest"`
					} `json:"descriptor"`
				} `json:"images"`
			}
			if json.Unmarshal(line, &ev) == nil && ev.Event == "result" {
				for _, im := range ev.Images {
					got[im.Name] = im.Descriptor.Digest
				}
			}
		}
		if len(got) != 3 {
			t.Fatalf("no result with 3 images in:\n%s", out)
		}
		return got
	}

	// As root.
	var o, e bytes.Buffer
	cmd := exec.Command(bin, "--json", "build", "-f", recipe)
	cmd.Env = append(os.Environ(), "VESSEL_ROOT="+filepath.Join(tmp, "rootstore"), "VESSEL_RUN="+filepath.Join(tmp, "rootrun"), "SOURCE_DATE_EPOCH=1700000000")
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("root build: %v\n%s", err, e.String())
	}
	root := digests(o.Bytes())

	// As the user, twice: the second build is all cached.
	for round := 0; round < 2; round++ {
		out := r.vessel(t, "--json", "build", "-f", recipe)
		user := digests(out)
		for name, d := range root {
			if user[name] != d {
				t.Errorf("round %d: image %s: rootless %s, root %s", round, name, user[name], d)
			}
		}
		if round == 1 && (bytes.Count(out, []byte(`"status":"cached"`)) != 3 || bytes.Contains(out, []byte(`"status":"run"`))) {
			t.Errorf("second rootless build was not fully cached:\n%s", out)
		}
	}
	r.checkClean(t, "the build")
}

// TestBuildRootlessStackerBase: an unprivileged user builds on an OCI
// layout whose layers are verified squashfs (here: vessel's own base,
// copied out of the store with vessel copy) with no root to convert it,
// using binds, overlay_dirs, generate_labels and a tar base made by a
// build_only image (stacker://), and gets the digests of a root build.
func TestBuildRootlessStackerBase(t *testing.T) {
	r := newRootlessEnv(t, []string{"squashfuse", "mksquashfs", "runc"}, "/bin/busybox")
	tmp, bin := r.tmp, r.bin
	src, err := os.ReadFile("../../examples/vessel.yaml")
	must(t, err)
	html, err := os.ReadFile("../../examples/www/index.html")
	must(t, err)
	edir := filepath.Join(tmp, "example")
	writeTree(t, edir, map[string]string{"vessel.yaml": string(src), "www/index.html": string(html)})
	rootEnv := append(os.Environ(), "VESSEL_ROOT="+filepath.Join(tmp, "rootstore"), "VESSEL_RUN="+filepath.Join(tmp, "rootrun"), "SOURCE_DATE_EPOCH=1700000000")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = rootEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vessel %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("build", "-f", filepath.Join(edir, "vessel.yaml"))
	layout := filepath.Join(tmp, "layout")
	run("copy", "base:latest", "oci:"+layout+":base")
	must(t, exec.Command("chmod", "-R", "a+rX", layout).Run())

	rdir := filepath.Join(tmp, "stackerproj")
	writeTree(t, rdir, map[string]string{
		"stacker.yaml": `
app:
  from:
    type: oci
    url: ` + layout + `:base
  binds:
    - ` + filepath.Join(tmp, "hostdir") + ` -> /mnt/host
  overlay_dirs:
    - source: overlay
      dest: /opt
  run: |
    cat /mnt/host/in > /from-bind
    ls /opt > /opt-list
  generate_labels: |
    cat /from-bind > /oci-labels/from-bind
maker:
  from: {type: built, tag: app}
  build_only: true
  run: |
    mkdir -p /out
    cd / && tar -cf /out/rootfs.tar bin etc opt from-bind
final:
  from:
    type: tar
    url: stacker://maker/out/rootfs.tar
  run: cat /from-bind > /again
`,
		"overlay/tool": "a tool\n",
	})
	writeTree(t, filepath.Join(tmp, "hostdir"), map[string]string{"in": "from the host\n"})
	recipe := filepath.Join(rdir, "stacker.yaml")
	digest := func(out string) string {
		t.Helper()
		for _, line := range strings.Split(out, "\n") {
			var ev struct {
				Event  string `json:"event"`
				Images []struct {
					Descriptor struct {
						Digest string `json:"digest"`
					} `json:"descriptor"`
				} `json:"images"`
			}
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "result" && len(ev.Images) == 3 {
				var ds []string
				for _, im := range ev.Images {
					ds = append(ds, im.Descriptor.Digest)
				}
				return strings.Join(ds, " ")
			}
		}
		t.Fatalf("no result in:\n%s", out)
		return ""
	}
	rootDigest := digest(run("--json", "build", "-f", recipe))

	if got := digest(string(r.vessel(t, "--json", "build", "-f", recipe))); got != rootDigest {
		t.Errorf("rootless %s, root %s", got, rootDigest)
	}
	r.checkClean(t, "the build")
}
