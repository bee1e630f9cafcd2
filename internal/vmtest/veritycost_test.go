package vmtest

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestVerityCostBench measures what verification costs per GB of layer
// data: in the Secure Boot guest, a service reads a large layer of random
// data (its image's files, cold, through loop + dm-verity + squashfs), and
// for comparison writes as much into its volume on the data partition and
// reads it back with O_DIRECT (loop-free ext4 on virtio, no verity); on
// the guest, vessel verity verify of that volume file (warm cache): the
// userspace path under the same emulated CPU; on this host, vessel verity
// verify of the layer blob (warm page cache) and veritysetup verify. Not part of make test: set
// VESSEL_VM_BENCH=1 (VESSEL_VM_BENCH_MB sets the layer size, default 256).
func TestVerityCostBench(t *testing.T) {
	if os.Getenv("VESSEL_VM_BENCH") == "" {
		t.Skip("set VESSEL_VM_BENCH=1 to measure the verification cost per GB (one VM boot, a large layer)")
	}
	mb := 256
	if v := os.Getenv("VESSEL_VM_BENCH_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 16 {
			t.Fatalf("VESSEL_VM_BENCH_MB=%q: want a number of MiB >= 16", v)
		}
		mb = n
	}
	e := setupBoot(t)
	needDiskTools(t, "runc")
	dir := filepath.Join(e.dir, "bench")
	big := filepath.Join(dir, "big")
	if err := os.MkdirAll(filepath.Join(big, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostTree(t, dir, e.vessel, true)
	// Random data: squashfs stores it uncompressed, so the guest's read
	// cost is I/O and hashing, not decompression.
	for i := 0; i < mb/16; i++ {
		f, err := os.Create(filepath.Join(big, "big", fmt.Sprintf("f%03d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(f, rand.Reader, 16<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	store := filepath.Join(dir, "store")
	v := vesselIn(t, e.vessel, dir, store)
	v("image", "create", "host:1", "--layer", "busybox", "--layer", "vessel", "--layer", "runc")
	// The service image also carries vessel (as /sbin/init), so the guest
	// can time vessel's userspace verify under the same emulated CPU.
	v("image", "create", "big:1", "--layer", "busybox", "--layer", "vessel", "--layer", "big")
	v("keys", "init", "keys", "--org", "Acme")
	v("keys", "product", "keys", "--name", "acme", "--product-id", productID)
	// Times from /proc/uptime (10 ms) around each read; the answer is
	// served on 8081 once both are done.
	svc := `B=/bin/busybox; up() { $B cut -d" " -f1 /proc/uptime; }; ` +
		`t0=$(up); $B cat /big/* >/dev/null; t1=$(up); ` +
		fmt.Sprintf(`$B dd if=/dev/urandom of=/state/plain bs=1M count=%d 2>/dev/null; $B sync; `, mb) +
		`t2=$(up); $B dd if=/state/plain of=/dev/null bs=1M iflag=direct 2>/dev/null; t3=$(up); ` +
		`r=$(/sbin/init verity format /state/plain /state/plain.hash | $B awk '/^Root hash:/ {print $3}'); ` +
		`t4=$(up); /sbin/init verity verify /state/plain /state/plain.hash $r >/dev/null && t5=$(up); ` +
		`$B mkdir -p /srv; echo "verity $t0 $t1 plain $t2 $t3 userspace $t4 $t5" >/srv/r.txt; $B rm -f /state/plain /state/plain.hash; ` +
		`trap "kill $p; exit 0" TERM; $B httpd -f -p 8081 -h /srv & p=$!; wait`
	sys := fmt.Sprintf("product: acme\nversion: 1\nhostfs: host:1\nservices:\n  - name: bench\n    image: big:1\n"+
		"    command: [/bin/sh, -c, %q]\n    network: host\n    volumes: [\"state:/state\"]\n", svc)
	os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(sys), 0o644)
	v("manifest", "build", "bench.yaml", "--keys", "keys", "-o", "bench.json")
	v("manifest", "sign", "bench.json", "--key", "keys/products/acme/product.key", "--cert", "keys/products/acme/product.pem", "-o", "bench.signed")
	initrd := filepath.Join(dir, "initrd.img")
	v("boot", "initrd", "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--modules", e.modules, "-o", initrd)
	uki := filepath.Join(dir, "bench.efi")
	// No vessel.test window: the VM is killed once the answer is read.
	v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", "console=ttyS0 vessel.ip=10.0.2.15/24", "--key", e.dbKey, "--cert", e.dbCert, "-o", uki)
	img := filepath.Join(dir, "bench.img")
	v("boot", "disk", "--manifest", "bench.signed", "--uki", uki, "--ca", "keys/manifest-ca.pem", "--product-id", productID,
		"--size", fmt.Sprintf("%dM", 3*mb+400), "-o", img)

	// The userspace path on this host: the same blob, warm cache.
	var digest, root, blocks string
	for _, m := range regexp.MustCompile(`"digest":\s*"sha256:([0-9a-f]{64})",\s*"verityRootHash":\s*"([0-9a-f]{64})",\s*"dataBlocks":\s*(\d+)`).FindAllStringSubmatch(v("--json", "image", "verify", "big:1"), -1) {
		digest, root, blocks = m[1], m[2], m[3] // the last layer: big
	}
	if digest == "" {
		t.Fatal("no layers in vessel image verify --json")
	}
	nb, _ := strconv.ParseInt(blocks, 10, 64)
	blob := filepath.Join(store, "oci", "blobs", "sha256", digest)
	gb := float64(nb*4096) / (1 << 30)
	timed := func(name string, args ...string) time.Duration {
		best := time.Duration(1 << 62)
		for i := 0; i < 3; i++ {
			start := time.Now()
			if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
			}
			if d := time.Since(start); d < best {
				best = d
			}
		}
		return best
	}
	hashOff := fmt.Sprint(nb * 4096)
	vesselVerify := timed(e.vessel, "verity", "verify", "--data-blocks", blocks, "--hash-offset", hashOff, blob, blob, root)
	t.Logf("host, userspace: vessel verity verify %.3f GiB layer: %v (best of 3) = %.2f s/GiB", gb, vesselVerify.Round(time.Millisecond), vesselVerify.Seconds()/gb)
	if _, err := exec.LookPath("veritysetup"); err == nil {
		vs := timed("veritysetup", "verify", blob, blob, root, "--data-blocks="+blocks, "--hash-offset="+hashOff)
		t.Logf("host, userspace: veritysetup verify: %v (best of 3) = %.2f s/GiB", vs.Round(time.Millisecond), vs.Seconds()/gb)
	}
	cat := timed("sh", "-c", `cat "$0" >/dev/null`, blob)
	t.Logf("host: cat of the blob (warm cache, no hashing): %v = %.2f s/GiB", cat.Round(time.Millisecond), cat.Seconds()/gb)

	vm, res := bootServe(t, img, e.vars, 8081, "/r.txt")
	defer vm.Kill()
	f := strings.Fields(res)
	if len(f) != 9 || f[0] != "verity" || f[3] != "plain" || f[6] != "userspace" {
		t.Fatalf("unexpected answer %q", res)
	}
	num := func(s string) float64 {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("answer %q: %v", res, err)
		}
		return x
	}
	dv, plain := num(f[2])-num(f[1]), num(f[5])-num(f[4])
	t.Logf("guest (qemu TCG): cold read of the %d MiB layer through loop + dm-verity + squashfs: %.2f s = %.2f s/GiB", mb, dv, dv/(float64(mb)/1024))
	t.Logf("guest (qemu TCG): O_DIRECT read of %d MiB from the ext4 data partition (no verity): %.2f s = %.2f s/GiB", mb, plain, plain/(float64(mb)/1024))
	us := num(f[8]) - num(f[7])
	t.Logf("guest (qemu TCG): vessel verity verify of those %d MiB in the volume (warm cache): %.2f s = %.2f s/GiB", mb, us, us/(float64(mb)/1024))
	if _, ok := vm.Find("data block"); ok {
		t.Error("dm-verity reported a corrupted block")
	}
}
