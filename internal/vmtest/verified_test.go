package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const otherProductID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

// verifiedDisks builds what the verified-boot tests boot: a host image
// (busybox-static and the static vessel as /sbin/init, one layer each),
// a signed system manifest naming it as hostfs, and disks made by vessel
// boot disk: the good one, the same with a flipped byte in the host's
// bottom layer, one signed for another product, and one whose data
// partition already accepted a higher version (rollback).
type verifiedDisks struct {
	good, corrupt, otherProduct, rollback, services string
	otherCA, reboot                                 string
	layers, webLayers                               []string // host and web layer digests, bottom first
	manifest                                        string   // digest of the good manifest
	web2Layer                                       string   // the layer corrupted on the services disk
}

// needDiskTools skips the test unless it runs as root (vessel image create
// and loop mounts need it) with the tools that make images and disks
// (mksquashfs, mkfs.ext4, mkfs.vfat, mcopy, sfdisk), the extra ones it
// names, and a static busybox for the host image.
func needDiskTools(t *testing.T, extra ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making images and disks needs root (vessel image create, loop mounts)")
	}
	for _, tool := range append([]string{"mksquashfs", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk"}, extra...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("missing %s (make deps)", tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("missing /bin/busybox (make deps installs busybox-static)")
	}
}

func makeVerifiedDisks(t *testing.T, e *bootEnv, cmdline string) *verifiedDisks {
	t.Helper()
	needDiskTools(t)
	dir := filepath.Join(e.dir, "verified")
	if err := os.MkdirAll(filepath.Join(dir, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostTree(t, dir, e.vessel, true)
	os.MkdirAll(filepath.Join(dir, "app", "www"), 0o755)
	os.WriteFile(filepath.Join(dir, "app", "www", "index.html"), []byte("hello from a verified service\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "app2", "www"), 0o755)
	os.WriteFile(filepath.Join(dir, "app2", "www", "index.html"), []byte("a service whose layer is corrupted\n"), 0o644)
	store := filepath.Join(dir, "store")
	v := vesselIn(t, e.vessel, dir, store)
	v("image", "create", "host:1", "--layer", "busybox", "--layer", "vessel", "--layer", "runc")
	v("image", "create", "web:1", "--layer", "busybox", "--layer", "app")
	v("image", "create", "web2:1", "--layer", "busybox", "--layer", "app2")
	d := &verifiedDisks{}
	for _, m := range regexp.MustCompile(`(?m)^\s+\d+\. (sha256:[0-9a-f]{64})$`).FindAllStringSubmatch(v("inspect", "host:1"), -1) {
		d.layers = append(d.layers, m[1])
	}
	for _, m := range regexp.MustCompile(`(?m)^\s+\d+\. (sha256:[0-9a-f]{64})$`).FindAllStringSubmatch(v("inspect", "web:1"), -1) {
		d.webLayers = append(d.webLayers, m[1])
	}
	var web2 []string
	for _, m := range regexp.MustCompile(`(?m)^\s+\d+\. (sha256:[0-9a-f]{64})$`).FindAllStringSubmatch(v("inspect", "web2:1"), -1) {
		web2 = append(web2, m[1])
	}
	if len(web2) != 2 {
		t.Fatalf("web2 has layers %v, want 2", web2)
	}
	d.web2Layer = web2[1]
	if len(d.layers) != 3 || len(d.webLayers) != 2 {
		t.Fatalf("host image has layers %v, want 3", d.layers)
	}
	v("keys", "init", "keys", "--org", "Acme")
	v("keys", "product", "keys", "--name", "acme", "--product-id", productID)
	v("keys", "product", "keys", "--name", "other", "--product-id", otherProductID)
	// Another organisation's CA with a product of the same name and ID:
	// its manifests chain to a CA the initrd does not carry.
	v("keys", "init", "keys2", "--org", "Mallory")
	v("keys", "product", "keys2", "--name", "acme", "--product-id", productID)
	// The initrd carries this key set's manifest CA; the UKI is signed
	// with the enrolled db key.
	initrd := filepath.Join(dir, "initrd.img")
	v("boot", "initrd", "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--modules", e.modules, "-o", initrd)
	uki := filepath.Join(dir, "root.efi")
	v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", cmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", uki)
	svcUKI := filepath.Join(dir, "services.efi")
	v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", servicesCmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", svcUKI)
	web2Svc := "  - name: web2\n    image: web2:1\n" +
		"    command: [/bin/sh, -c, '" + httpd(8081, "/www") + "']\n    network: host\n"
	// boots appends this boot's ID to a volume (on the data partition)
	// and serves the list on 8081.
	boots := "  - name: boots\n    image: web:1\n" +
		"    command: [/bin/sh, -c, '/bin/busybox cat /proc/sys/kernel/random/boot_id >> /state/boots; /bin/busybox mkdir -p /srv; /bin/busybox cp /state/boots /srv/boots.txt; " +
		httpd(8081, "/srv") + "']\n    network: host\n    volumes: [\"state:/state\"]\n"
	// disk signs a manifest (host:1, web, and extra services) with the
	// product key of keys/products/product and writes a disk with it.
	disk := func(name, keys, product string, version int, uki, extra string) string {
		sys := fmt.Sprintf("product: %s\nversion: %d\nhostfs: host:1\nservices:\n  - name: web\n    image: web:1\n"+
			"    command: [/bin/sh, -c, '%s']\n    network: host\n", product, version, httpd(8080, "/www")) + extra
		os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(sys), 0o644)
		v("manifest", "build", name+".yaml", "--keys", keys, "-o", name+".json")
		v("manifest", "sign", name+".json", "--key", keys+"/products/"+product+"/product.key", "--cert", keys+"/products/"+product+"/product.pem", "-o", name+".signed")
		pid := productID
		if product == "other" {
			pid = otherProductID
		}
		img := filepath.Join(dir, name+".img")
		v("boot", "disk", "--manifest", name+".signed", "--uki", uki, "--ca", keys+"/manifest-ca.pem", "--product-id", pid, "--size", "400M", "-o", img)
		return img
	}
	d.good = disk("good", "keys", "acme", 2, uki, web2Svc)
	d.otherProduct = disk("other", "keys", "other", 2, uki, web2Svc)
	d.rollback = disk("rollback", "keys", "acme", 2, uki, web2Svc)
	d.services = disk("services", "keys", "acme", 2, svcUKI, web2Svc)
	// vessel boot disk checks the manifest against the CA it is given:
	// here the other CA, so the disk is written and the initrd refuses it.
	d.otherCA = disk("otherca", "keys2", "acme", 2, uki, web2Svc)
	d.reboot = disk("reboot", "keys", "acme", 2, svcUKI, boots)
	var sum struct {
		Digest string `json:"digest"`
	}
	out := v("--json", "manifest", "verify", "good.signed", "--ca", "keys/manifest-ca.pem", "--min-version", "1")
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Digest == "" {
		t.Fatalf("manifest verify --json: %v: %s", err, out)
	}
	d.manifest = sum.Digest

	// On the services disk web2's own layer has a flipped byte in its
	// first block: that service must be refused, web must run.
	flipByte(t, d.services, findBlock(t, d.services, filepath.Join(store, "oci", "blobs", "sha256", strings.TrimPrefix(d.web2Layer, "sha256:")))+512)

	// The rollback disk's data partition remembers that version 3 was
	// accepted before (as a machine that ran a newer manifest would).
	setAcceptedVersion(t, d.rollback, 3)

	// The corrupt disk: one byte of the host's bottom layer, inside its
	// first data block (the squashfs superblock's block, read at mount).
	d.corrupt = filepath.Join(dir, "corrupt.img")
	run(t, "cp", "--sparse=always", d.good, d.corrupt)
	blob := filepath.Join(store, "oci", "blobs", "sha256", strings.TrimPrefix(d.layers[0], "sha256:"))
	off := findBlock(t, d.corrupt, blob)
	flipByte(t, d.corrupt, off+512)
	return d
}

// httpd is a shell command serving dir on port: busybox httpd as PID 1 of
// its container would ignore SIGTERM (and be killed after the supervisor's
// 10 s grace), so the shell traps it and stops httpd at once.
func httpd(port int, dir string) string {
	return fmt.Sprintf(`trap "kill $p; exit 0" TERM; /bin/busybox httpd -f -p %d -h %s & p=$!; wait`, port, dir)
}

// servicesCmdline boots to the services: the host starts the manifest's
// services under vessel up, with the address qemu's user network expects.
const servicesCmdline = "console=ttyS0 vessel.test=root,services vessel.ip=10.0.2.15/24"

// hostTree makes the host image's layer directories in dir: busybox
// (busybox-static, /bin/sh linked to it, the directories the host mounts
// on and vessel's state directory), vessel (the static vessel as
// /sbin/init) and, withRunc, runc (runc and the shared libraries it links:
// the supervisor's OCI runtime; the test is skipped without runc). The
// image is made by `image create host:1 --layer busybox --layer vessel
// [--layer runc]` in dir.
func hostTree(t *testing.T, dir, vessel string, withRunc bool) {
	t.Helper()
	bb, vs := filepath.Join(dir, "busybox"), filepath.Join(dir, "vessel")
	for _, d := range []string{filepath.Join(bb, "bin"), filepath.Join(vs, "sbin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyExec(t, "/bin/busybox", filepath.Join(bb, "bin", "busybox"))
	os.Symlink("busybox", filepath.Join(bb, "bin", "sh"))
	for _, d := range []string{"etc", "dev", "proc", "sys", "run", "tmp", "var/lib/vessel"} {
		os.MkdirAll(filepath.Join(bb, d), 0o755)
	}
	copyExec(t, vessel, filepath.Join(vs, "sbin", "init"))
	if !withRunc {
		return
	}
	rc := filepath.Join(dir, "runc")
	runcPath, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("missing runc (make deps installs it)")
	}
	for _, f := range append([]string{runcPath}, sharedLibs(t, runcPath)...) {
		os.MkdirAll(filepath.Join(rc, filepath.Dir(f)), 0o755)
		copyExec(t, f, filepath.Join(rc, f))
	}
}

// sharedLibs lists the shared libraries ldd says bin needs (and the loader).
func sharedLibs(t *testing.T, bin string) []string {
	t.Helper()
	var out []string
	for _, m := range regexp.MustCompile(`(?m)(/\S+\.so[.0-9]*) \(0x`).FindAllStringSubmatch(run(t, "ldd", bin), -1) {
		out = append(out, m[1])
	}
	if len(out) == 0 {
		t.Fatalf("ldd %s lists no libraries", bin)
	}
	return out
}

func copyExec(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// findBlock returns the byte offset in img of the 1 KiB-aligned block equal
// to the first 1 KiB of the file blob (ext4 stores the blob's first block
// there; a small ext4 has 1 KiB blocks).
func findBlock(t *testing.T, img, blob string) int64 {
	t.Helper()
	want := make([]byte, 1024)
	bf, err := os.Open(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	if _, err := io.ReadFull(bf, want); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(f, buf)
		for i := 0; i+1024 <= n; i += 1024 {
			if bytes.Equal(buf[i:i+1024], want) {
				return off + int64(i)
			}
		}
		off += int64(n)
		if err != nil {
			t.Fatalf("the first block of %s is not in %s", blob, img)
		}
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// setAcceptedVersion rewrites trust/versions.json on the disk's data
// partition (mounted through a loop device at its offset) so that version
// is the highest accepted for the product.
func setAcceptedVersion(t *testing.T, img string, version int) {
	t.Helper()
	withPartition(t, img, "vessel-data", func(mnt string) {
		p := filepath.Join(mnt, "trust", "versions.json")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var f map[string]map[string]map[string]any
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		rec, ok := f["products"][productID]
		if !ok {
			t.Fatalf("%s has no record for %s: %s", p, productID, b)
		}
		rec["version"] = version
		rec["digest"] = "sha256:" + strings.Repeat("0", 64)
		if b, err = json.MarshalIndent(f, "", "  "); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	})
}

var dmLine = regexp.MustCompile(`vessel-host: dm (dm-\d+) (vessel-[0-9a-f]{32}) layer (sha256:[0-9a-f]{64}) table 0 (\d+) verity 1 (\d+:\d+) (\d+:\d+) 4096 4096 \d+ \d+ sha256 ([0-9a-f]{64}) `)

// TestVerifiedBoot boots vessel boot disks under Secure Boot with
// vessel.test=root: the good one reaches the host's init through a
// dm-verity device per host layer; a flipped byte in a host layer stops
// the boot naming the layer and the block; a manifest of another product,
// one under another CA and a rolled-back version are refused before
// anything is mounted; services answer (one refused for a corrupted
// layer); a disk booted twice forgets host-root writes, keeps its volume
// and finds its ext4 clean. Six VMs in parallel (seven boots).
func TestVerifiedBoot(t *testing.T) {
	e := setupBoot(t)
	d := makeVerifiedDisks(t, e, "console=ttyS0 vessel.test=root")

	boot := func(t *testing.T, disk string, markers ...string) *VM {
		vm := StartT(t, Config{Disk: disk, Vars: e.vars, MemoryMB: 768, TPM: disk == d.good})
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		if _, err := vm.Wait(ctx, markers...); err != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(40))
		}
		if err := vm.WaitExit(ctx); err != nil {
			t.Fatalf("the guest did not power off: %v\n%s", err, vm.Tail(40))
		}
		return vm
	}
	t.Run("boots-verified-host", func(t *testing.T) {
		t.Parallel()
		vm := boot(t, d.good, "vessel-host: powering off", "vessel-init: powering off")
		if l, ok := vm.Find("FAILED"); ok {
			t.Fatalf("%s\n%s", l.Text, vm.Tail(40))
		}
		up, ok := vm.Find("vessel-host: up (manifest " + d.manifest + ", version 2)")
		if !ok {
			t.Fatalf("no host marker for manifest %s version 2:\n%s", d.manifest, vm.Tail(40))
		}
		seen := map[string]bool{}
		for _, l := range vm.Lines() {
			if m := dmLine.FindStringSubmatch(l.Text); m != nil {
				if m[5] != m[6] {
					t.Errorf("verity table reads data from %s and hashes from %s; vessel keeps both in one blob", m[5], m[6])
				}
				seen[m[3]] = true
				t.Logf("%s", l.Text)
			}
		}
		for _, l := range d.layers {
			if !seen[l] {
				t.Errorf("no dm-verity target for host layer %s", l)
			}
		}
		if _, ok := vm.Find("vessel-host: root writable"); !ok {
			t.Error("the host root is not writable")
		}
		if l, ok := vm.Find("vessel-host: mount record host: "); !ok || !strings.HasSuffix(l.Text, " at /") {
			t.Errorf("the host root's mount record does not say it is at /: %q", l.Text)
		}
		// The host root is a root: setuid programs and device nodes work.
		if l, ok := vm.Find("vessel-host: root overlay flags "); !ok {
			t.Errorf("no root overlay line:\n%s", vm.Tail(40))
		} else if strings.Contains(l.Text, "nosuid") || strings.Contains(l.Text, "nodev") {
			t.Errorf("the host root is mounted %s", l.Text)
		}
		// The initrd measured what it verified into vessel's PCR, and the
		// log it handed to the host replays to the TPM's value.
		if l, ok := vm.Find("vessel-host: pcr15 sha256 "); !ok {
			t.Errorf("no PCR 15 report:\n%s", vm.Tail(40))
		} else if !strings.Contains(l.Text, " events=1 match=true manifest="+d.manifest+" version=2") {
			t.Errorf("PCR 15 does not replay to the verified manifest %s: %s", d.manifest, l.Text)
		}
		started, _ := vm.Find("vessel-init: started")
		sw, _ := vm.Find("vessel-init: switch_root to ")
		t.Logf("serial: %q\n%q\n%q", started.Text, sw.Text, up.Text)
	})
	t.Run("corrupt-host-layer-stops", func(t *testing.T) {
		t.Parallel()
		vm := boot(t, d.corrupt, "vessel-init: powering off")
		if _, ok := vm.Find("vessel-host:"); ok {
			t.Fatalf("the host ran from a corrupted layer:\n%s", vm.Tail(40))
		}
		l, ok := vm.Find("vessel-init: FAILED")
		if !ok {
			t.Fatalf("no failure line:\n%s", vm.Tail(40))
		}
		for _, want := range []string{fmt.Sprintf("layer 1 of %d (%s)", len(d.layers), d.layers[0]), "dm-verity: data block 0 is corrupted"} {
			if !strings.Contains(l.Text, want) {
				t.Errorf("failure line lacks %q: %s", want, l.Text)
			}
		}
		t.Logf("console: %s", l.Text)
	})
	t.Run("services-answer", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		vm := StartT(t, Config{Disk: d.services, Vars: e.vars, MemoryMB: 768, Net: []string{fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:8080", port)}})
		deadline := time.Now().Add(6 * time.Minute)
		var body string
		for time.Now().Before(deadline) {
			if l, ok := vm.Find("FAILED"); ok {
				t.Fatalf("%s\n%s", l.Text, vm.Tail(40))
			}
			if done, _ := vm.Exited(); done {
				t.Fatalf("the guest stopped before the service answered:\n%s", vm.Tail(40))
			}
			c := http.Client{Timeout: 5 * time.Second}
			if resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", port)); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					body = string(b)
					break
				}
			}
			time.Sleep(time.Second)
		}
		if body != "hello from a verified service\n" {
			t.Fatalf("the web service did not answer through hostfwd (got %q):\n%s", body, vm.Tail(40))
		}
		if _, ok := vm.Find("vessel-host: supervisor started"); !ok {
			t.Errorf("no supervisor line:\n%s", vm.Tail(40))
		}
		t.Logf("the service answered %q through hostfwd", body)
		// Then the guest lists its verity devices with the services up,
		// stops the supervisor and powers off cleanly.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, err := vm.Wait(ctx, "vessel-host: powering off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(40))
		}
		if err := vm.WaitExit(ctx); err != nil {
			t.Fatalf("the guest did not power off: %v", err)
		}
		upAt := -1
		tables := map[string]string{}
		for i, l := range vm.Lines() {
			if strings.HasPrefix(l.Text, "vessel-host: services up: web") {
				upAt = i
			}
			if m := regexp.MustCompile(`^vessel-host: dm dm-\d+ (vessel-[0-9a-f]{32}) table (0 \d+ verity 1 .*)$`).FindStringSubmatch(l.Text); m != nil && upAt >= 0 {
				tables[m[1]] = m[2]
			}
		}
		if upAt < 0 {
			t.Fatalf("no services-up line:\n%s", vm.Tail(40))
		}
		upLine := vm.Lines()[upAt].Text
		if !strings.HasPrefix(upLine, "vessel-host: services up: web; refused: web2 (") || !strings.Contains(upLine, d.web2Layer) || !strings.Contains(upLine, "input/output error") {
			t.Errorf("want web up and web2 refused naming its layer %s and the I/O error: %s", d.web2Layer, upLine)
		}
		if _, ok := vm.Find("data block 0 is corrupted"); !ok {
			t.Error("no dm-verity corruption line from the kernel for web2's layer")
		}
		for _, l := range append(append([]string{}, d.layers...), d.webLayers...) {
			name := "vessel-" + strings.TrimPrefix(l, "sha256:")[:32]
			if tables[name] == "" {
				t.Errorf("no dm-verity target %s for layer %s with the services up", name, l)
			}
		}
		// The supervisor's own log is on the console: stopping unmounts
		// the service roots and removes their verity devices
		// (DM_DEV_REMOVE), or it would say what it could not undo.
		for _, want := range []string{"vessel-host: vessel.test window over: stopping the supervisor", "down: every service stopped and unmounted", "vessel-host: data partition clean (read-only)"} {
			if _, ok := vm.Find(want); !ok {
				t.Errorf("no %q in the shutdown:\n%s", want, vm.Tail(30))
			}
		}
		// vessel up exits 143 after the SIGTERM that stopped it (as shells
		// expect), 0 if it had already finished: not killed.
		if l, ok := vm.Find("vessel-host: supervisor exited"); !ok || (!strings.HasSuffix(l.Text, "(status 143)") && !strings.HasSuffix(l.Text, "(status 0)")) {
			t.Errorf("want the supervisor to exit by itself after SIGTERM (status 143): %q", l.Text)
		}
		if l, ok := vm.Find("FAILED"); ok {
			t.Errorf("%s", l.Text)
		}
		for _, l := range vm.Lines() {
			if strings.HasPrefix(l.Text, "vessel-") && !strings.Contains(l.Text, " dm dm-") {
				t.Logf("%8v %s", l.At.Round(time.Millisecond), l.Text)
			}
		}
	})
	t.Run("reboot-forgets-root-keeps-volume", func(t *testing.T) {
		t.Parallel()
		// The same disk booted twice: each boot's boots service appends its
		// boot ID to a volume and serves the list; the host's init reports
		// what an earlier boot left in the host root; the window of
		// vessel.test=services ends in a clean power-off.
		// The second boot is powered off with the ACPI power button.
		var ids []string
		for n := 1; n <= 2; n++ {
			vm, list := bootServe(t, d.reboot, e.vars, 8081, "/boots.txt")
			if n == 2 {
				if err := vm.Monitor("system_powerdown"); err != nil {
					t.Fatal(err)
				}
			}
			ids = strings.Fields(list)
			if len(ids) != n || (n == 2 && ids[0] == ids[1]) {
				t.Fatalf("boot %d: the volume lists boots %q, want %d distinct boot IDs", n, ids, n)
			}
			// Only what vessel.test=root wrote in this boot: nothing left
			// from the boot before.
			if l, ok := vm.Find("vessel-host: root writable"); !ok || !strings.HasSuffix(l.Text, "left from an earlier boot: none)") {
				t.Errorf("boot %d: want a writable root with nothing from an earlier boot: %q", n, l.Text)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			if _, err := vm.Wait(ctx, "vessel-host: powering off"); err != nil {
				cancel()
				t.Fatalf("boot %d: %v\n%s", n, err, vm.Tail(40))
			}
			err := vm.WaitExit(ctx)
			cancel()
			if err != nil {
				t.Fatalf("boot %d: the guest did not power off: %v", n, err)
			}
			if _, ok := vm.Find("vessel-host: data partition clean (read-only)"); !ok {
				t.Errorf("boot %d: no clean data partition before power-off:\n%s", n, vm.Tail(30))
			}
			stopped := "vessel-host: vessel.test window over: stopping the supervisor"
			if n == 2 {
				stopped = "vessel-host: power button (power off): stopping the supervisor"
			}
			if _, ok := vm.Find(stopped); !ok {
				t.Errorf("boot %d: no %q:\n%s", n, stopped, vm.Tail(30))
			}
			// The data partition was mounted (read-only by the initrd,
			// then read-write): after a clean power-off the journal
			// needs no replay.
			mounted := false
			for _, l := range vm.Lines() {
				if strings.Contains(l.Text, "EXT4-fs (vda2): mounted filesystem") {
					mounted = true
				}
				if strings.Contains(l.Text, "EXT4-fs (vda2)") && (strings.Contains(l.Text, "recovery") || strings.Contains(l.Text, "orphan")) {
					t.Errorf("boot %d: the data partition was not clean: %s", n, l.Text)
				}
			}
			if !mounted {
				t.Errorf("boot %d: no EXT4-fs (vda2) mount line on the console (is the kernel log there?)", n)
			}
			t.Logf("boot %d: volume lists %q", n, ids)
		}
	})
	for name, c := range map[string]struct{ disk, want string }{
		"other-ca-refused":      {d.otherCA, "certificate signed by unknown authority"},
		"other-product-refused": {d.otherProduct, ": product: "},
		"rollback-refused":      {d.rollback, "lower than version 3 already accepted"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			vm := boot(t, c.disk, "vessel-init: powering off")
			l, ok := vm.Find("vessel-init: FAILED")
			if !ok {
				t.Fatalf("no failure line:\n%s", vm.Tail(40))
			}
			if !strings.Contains(l.Text, "refused before mounting anything") || !strings.Contains(l.Text, c.want) {
				t.Errorf("failure line lacks %q: %s", c.want, l.Text)
			}
			if _, ok := vm.Find("vessel-init: host image"); ok {
				t.Error("a host image was mounted after the manifest was refused")
			}
			t.Logf("console: %s", l.Text)
		})
	}
}

// bootServe boots disk with the services command line, a hostfwd from a
// free 127.0.0.1 port to the guest's port, and returns the VM once GET path
// answers 200, with the body.
func bootServe(t *testing.T, disk, vars string, guestPort int, path string) (*VM, string) {
	// Monitor: the reboot case powers off with the ACPI power button.
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	vm := StartT(t, Config{Disk: disk, Vars: vars, MemoryMB: 768, Monitor: true, Net: []string{fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:%d", port, guestPort)}})
	deadline := time.Now().Add(6 * time.Minute)
	for time.Now().Before(deadline) {
		if l, ok := vm.Find("FAILED"); ok {
			t.Fatalf("%s\n%s", l.Text, vm.Tail(40))
		}
		if done, _ := vm.Exited(); done {
			t.Fatalf("the guest stopped before the service answered:\n%s", vm.Tail(40))
		}
		c := http.Client{Timeout: 5 * time.Second}
		if resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path)); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return vm, string(b)
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("no answer from the guest's port %d in 6 minutes:\n%s", guestPort, vm.Tail(40))
	return nil, ""
}
