package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/userns/usernstest"
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
	for _, tool := range []string{"squashfuse", "mksquashfs", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	const bb = "/var/cache/vessel-test/arm64/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skipf("%s is missing: run 'make deps' (it unpacks busybox-static:arm64)", bb)
	}
	u := usernstest.NewUser(t) // skips unless root with useradd, newuidmap and user namespaces
	if binfmt.Check("arm64") != nil {
		es, err := binfmt.Plan([]string{"arm64"}, "", "")
		if err != nil {
			t.Skipf("no arm64 emulation: %v", err)
		}
		if _, err := binfmt.Install("", es); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	for d := tmp; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()) {
			os.Chmod(d, 0o755)
		}
	}
	bin := filepath.Join(tmp, "bin", "vessel")
	copyExe(t, bin)
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

	store := filepath.Join(tmp, "userstore")
	xdg := filepath.Join(tmp, "xdg")
	must(t, os.Mkdir(store, 0o755))
	must(t, os.Mkdir(xdg, 0o700))
	u.Chown(t, store)
	u.Chown(t, xdg)
	o.Reset()
	e.Reset()
	cmd = u.Command([]string{"VESSEL_ROOT=" + store, "XDG_RUNTIME_DIR=" + xdg, "SOURCE_DATE_EPOCH=1700000000"}, bin, "--json", "build", "-f", recipe)
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("rootless build: %v\n%s", err, e.String())
	}
	if user := digest(o.Bytes()); user != root {
		t.Errorf("rootless arm64 build %s, root %s", user, root)
	}
	if pids := u.Pids(); len(pids) > 0 {
		t.Errorf("processes of the user still run after the build: %v", pids)
	}
	if m := mountsUnder(tmp); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
}
