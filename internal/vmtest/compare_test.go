package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestVerifiedBootCompare (VESSEL_VM_BENCH=1, not in make test) boots, one
// at a time and alternating, the verified host root (vessel's initrd:
// manifest verified, 3 layers through dm-verity, overlay, switch_root) and
// the same kernel with Debian's mkinitramfs initrd (/boot/initrd.img-*) on
// a plain ext4 root holding the same busybox, both as UKIs signed with the
// enrolled db key under Secure Boot. It reports the kernel uptime at which
// the root's init starts (vessel: the host's first line; Debian: a busybox
// /sbin/init that prints /proc/uptime) and the ratio of the medians.
func TestVerifiedBootCompare(t *testing.T) {
	if os.Getenv("VESSEL_VM_BENCH") == "" {
		t.Skip("set VESSEL_VM_BENCH=1 to run the boot comparison (several sequential VM boots)")
	}
	n := 3
	if s := os.Getenv("VESSEL_VM_BENCH_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	e := setupBoot(t)
	d := makeVerifiedDisks(t, e, "console=ttyS0 vessel.test=root")
	debInitrd := "/boot/initrd.img-" + filepath.Base(e.modules)
	if _, err := os.Stat(debInitrd); err != nil {
		t.Skipf("no Debian initrd %s (update-initramfs makes it)", debInitrd)
	}
	plain := plainDisk(t, e, debInitrd)
	hostUp := regexp.MustCompile(`vessel-host: up .* switch_root at ([0-9.]+)s, uptime ([0-9.]+)s`)
	plainUp := regexp.MustCompile(`plain-root: init uptime ([0-9.]+)`)
	var vs, sw, ps []float64
	for i := 0; i < n; i++ {
		vm := StartT(t, Config{Disk: d.good, Vars: e.vars, MemoryMB: 768})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		if _, err := vm.Wait(ctx, "vessel-host: powering off", "FAILED"); err != nil {
			cancel()
			t.Fatalf("%v\n%s", err, vm.Tail(30))
		}
		cancel()
		vm.Kill()
		for _, l := range vm.Lines() {
			if m := hostUp.FindStringSubmatch(l.Text); m != nil {
				a, _ := strconv.ParseFloat(m[1], 64)
				b, _ := strconv.ParseFloat(m[2], 64)
				sw, vs = append(sw, a), append(vs, b)
			}
		}
		vm = StartT(t, Config{Disk: plain, Vars: e.vars, MemoryMB: 768})
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Minute)
		if _, err := vm.Wait(ctx, "plain-root: init uptime"); err != nil {
			cancel()
			t.Fatalf("%v\n%s", err, vm.Tail(30))
		}
		cancel()
		vm.Kill()
		for _, l := range vm.Lines() {
			if m := plainUp.FindStringSubmatch(l.Text); m != nil {
				a, _ := strconv.ParseFloat(m[1], 64)
				ps = append(ps, a)
			}
		}
	}
	if len(vs) != n || len(ps) != n {
		t.Fatalf("got %d verified and %d plain timings, want %d each", len(vs), len(ps), n)
	}
	t.Logf("kernel start -> root init, seconds (median of %d; Secure Boot, TCG):", n)
	t.Logf("  vessel verified root: switch_root %.3f, host init %.3f   all %v / %v", median(sw), median(vs), sw, vs)
	t.Logf("  Debian mkinitramfs + plain ext4 root: init %.3f   all %v", median(ps), ps)
	t.Logf("  ratio (host init): %.2fx", median(vs)/median(ps))
}

func median(x []float64) float64 {
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// plainDisk makes a GPT disk: an ESP with a UKI of the same kernel and
// Debian's initrd (signed with the enrolled db key), and an ext4 root with
// busybox whose /sbin/init prints the uptime and powers off.
func plainDisk(t *testing.T, e *bootEnv, initrd string) string {
	t.Helper()
	dir := filepath.Join(e.dir, "plain")
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	copyExec(t, "/bin/busybox", filepath.Join(root, "bin", "busybox"))
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	init := "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc 2>/dev/null\nread up idle < /proc/uptime\necho \"plain-root: init uptime $up\"\n/bin/busybox poweroff -f\n"
	if err := os.WriteFile(filepath.Join(root, "sbin", "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	uki := filepath.Join(dir, "plain.efi")
	run(t, e.vessel, "boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", "console=ttyS0 root=/dev/vda2 rootfstype=ext4 ro",
		"--key", e.dbKey, "--cert", e.dbCert, "-o", uki)
	const mib = 1 << 20
	espSize, rootSize := int64(64*mib), int64(128*mib)
	esp, rootImg, disk := filepath.Join(dir, "esp.img"), filepath.Join(dir, "root.img"), filepath.Join(dir, "plain.img")
	for p, size := range map[string]int64{esp: espSize, rootImg: rootSize, disk: mib + espSize + rootSize + mib} {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	run(t, "mkfs.vfat", "-F", "32", esp)
	run(t, "mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
	run(t, "mcopy", "-i", esp, uki, "::/EFI/BOOT/BOOTX64.EFI")
	run(t, "mkfs.ext4", "-q", "-F", "-d", root, "-E", "root_owner=0:0", rootImg)
	cmd := exec.Command("sfdisk", "-q", disk)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=%d, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
		espSize/512, (mib+espSize)/512, rootSize/512))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	run(t, "dd", "if="+esp, "of="+disk, "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
	run(t, "dd", "if="+rootImg, "of="+disk, "bs=1M", fmt.Sprintf("seek=%d", 1+espSize/mib), "conv=notrunc,sparse", "status=none")
	return disk
}
