package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vesselos/vessel/internal/binfmt"
)

// xarchRecipe is an arm64 busybox image built from scratch: its script
// runs the imported arm64 busybox through qemu-user.
const xarchRecipe = `
tiny:
  from: {type: scratch}
  arch: arm64
  imports:
    - busybox
  run: |
    #!/stacker/imports/busybox sh
    set -e
    /stacker/imports/busybox mkdir -p /bin /etc
    /stacker/imports/busybox cp /stacker/imports/busybox /bin/busybox
    /bin/busybox --install -s /bin
    uname -m > /etc/machine
  cmd: [/bin/cat, /etc/machine]
`

// TestBuildXarchRootlessSameDigests builds an arm64 image on this machine
// as root and as an unprivileged user (the F flag makes the emulator work
// inside the user namespace) and wants the same digest, whose /etc/machine
// says aarch64.
func TestBuildXarchRootlessSameDigests(t *testing.T) {
	const bb = "/var/cache/vessel-test/arm64/busybox" // make deps unpacks busybox-static:arm64
	r := newRootlessEnv(t, []string{"squashfuse", "mksquashfs", "runc"}, bb)
	if binfmt.Check("arm64") != nil {
		es, err := binfmt.Plan([]string{"arm64"}, "", "")
		if err != nil {
			t.Skipf("no arm64 emulation: %v", err)
		}
		if _, err := binfmt.Install("", es); err != nil {
			t.Fatal(err)
		}
	}
	tmp, bin := r.tmp, r.bin
	rdir := filepath.Join(tmp, "recipe")
	writeTree(t, rdir, map[string]string{"vessel.yaml": xarchRecipe})
	b, err := os.ReadFile(bb)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(rdir, "busybox"), b, 0o755))
	recipe := filepath.Join(rdir, "vessel.yaml")
	digest := func(out []byte) string {
		t.Helper()
		for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
			var ev struct {
				Event  string `json:"event"`
				Images []struct {
					Platform   string `json:"platform"`
					Descriptor struct {
						Digest string `json:"digest"`
					} `json:"descriptor"`
				} `json:"images"`
			}
			if json.Unmarshal(line, &ev) == nil && ev.Event == "result" && len(ev.Images) == 1 {
				if ev.Images[0].Platform != "linux/arm64/v8" {
					t.Fatalf("built for %s", ev.Images[0].Platform)
				}
				return ev.Images[0].Descriptor.Digest
			}
		}
		t.Fatalf("no result in:\n%s", out)
		return ""
	}
	var o, e bytes.Buffer
	rootEnv := append(os.Environ(), "VESSEL_ROOT="+filepath.Join(tmp, "rootstore"), "VESSEL_RUN="+filepath.Join(tmp, "rootrun"), "SOURCE_DATE_EPOCH=1700000000")
	cmd := exec.Command(bin, "--json", "build", "-f", recipe)
	cmd.Env = rootEnv
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("root build: %v\n%s", err, e.String())
	}
	root := digest(o.Bytes())
	cmd = exec.Command(bin, "run", "tiny")
	cmd.Env = rootEnv
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "aarch64\n" {
		t.Fatalf("root run: %q %v", out, err)
	}
	// vessel run keeps its layer mounts warm for a minute; down takes them
	// down, so what the leak check below finds is a leak.
	cmd = exec.Command(bin, "down")
	cmd.Env = rootEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("root down: %v\n%s", err, out)
	}

	if user := digest(r.vessel(t, "--json", "build", "-f", recipe)); user != root {
		t.Errorf("rootless arm64 build %s, root %s", user, root)
	}
	r.checkClean(t, "the build")
}
