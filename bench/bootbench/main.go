// Command bootbench boots the same kernel under OVMF Secure Boot (qemu
// TCG, swtpm) with vessel's initrd and with a Debian mkinitramfs initrd,
// (uncompressed, zstd as by default, stripped+zstd) and prints build time, size and the boot split into firmware, kernel and
// initrd up to the first userspace line. Run by bench/boot.sh.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/vmtest"
)

type boot struct {
	Name          string  `json:"name"`
	Initrd        string  `json:"initrd"`
	InitrdBytes   int64   `json:"initrdBytes"`
	BuildSeconds  float64 `json:"buildSeconds"`
	FirmwareS     float64 `json:"firmwareSeconds"`       // qemu start -> kernel start (host clock)
	KernelS       float64 `json:"kernelSeconds"`         // kernel start -> "Run /init" (guest printk clock)
	InitrdS       float64 `json:"initrdSeconds"`         // "Run /init" -> first userspace line
	FirstUserS    float64 `json:"firstUserspaceSeconds"` // kernel start -> first userspace line
	GuestUptimeS  float64 `json:"guestUptimeSeconds,omitempty"`
	FirstUserLine string  `json:"firstUserspaceLine"`
	WallToMarkerS float64 `json:"wallToMarkerSeconds"` // qemu start -> first userspace line (host clock)
}

var repeat = 1

var printkTS = regexp.MustCompile(`^\[\s*(\d+\.\d+)\]`)

func main() {
	vessel := flag.String("vessel", "bin/vessel", "static vessel binary")
	workDir := flag.String("dir", "", "work directory (default a temp dir, removed)")
	jsonOut := flag.Bool("json", false, "print JSON")
	flag.IntVar(&repeat, "n", 1, "boots per initrd; the boot with the median time to the first userspace line is reported")
	flag.Parse()
	if err := run(*vessel, *workDir, *jsonOut); err != nil {
		fmt.Fprintln(os.Stderr, "bootbench:", err)
		os.Exit(1)
	}
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func timed(name string, args ...string) (float64, error) {
	t := time.Now()
	err := sh(name, args...)
	return time.Since(t).Seconds(), err
}

func run(vessel, dir string, jsonOut bool) error {
	if m := vmtest.Missing(vmtest.Config{}); m != "" {
		return fmt.Errorf("cannot boot VMs: %s", m)
	}
	kernel, modules, ok := kernelTree()
	if !ok {
		return fmt.Errorf("no /boot/vmlinuz-* with /lib/modules (install linux-image-amd64)")
	}
	version := filepath.Base(modules)
	if dir == "" {
		d, err := os.MkdirTemp("", "bootbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	keys := filepath.Join(dir, "sb")
	vars := filepath.Join(dir, "VARS.fd")
	ca := filepath.Join(dir, "ca.pem")
	for _, c := range [][]string{
		{vessel, "keys", "uefi", keys, "--org", "bench", "--force"},
		{vessel, "boot", "vars", "--keys", keys, "-o", vars},
		{"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(dir, "ca.key"), "-out", ca,
			"-subj", "/CN=bench CA", "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE"},
	} {
		if err := sh(c[0], c[1:]...); err != nil {
			return err
		}
	}
	// The same binary stripped of its symbol table and DWARF (-ldflags "-s -w";
	// Go's stack traces need neither).
	stripped := filepath.Join(dir, "vessel-stripped")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", stripped, "./cmd/vessel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build a stripped vessel: %v: %s", err, out)
	}
	var boots []*boot
	for _, v := range []struct{ name, bin, comp string }{
		{"vessel none", vessel, "none"},
		{"vessel zstd", vessel, "zstd"}, // the default
		{"vessel -s -w zstd", stripped, "zstd"},
	} {
		b := &boot{Name: v.name, Initrd: filepath.Join(dir, strings.ReplaceAll(v.name, " ", "_")+".img")}
		var err error
		if b.BuildSeconds, err = timed(v.bin, "boot", "initrd", "--ca", ca, "--product-id", "0f8fad5b-d9cb-469f-a165-70867728950e",
			"--modules", modules, "--compress", v.comp, "--vessel", v.bin, "-o", b.Initrd); err != nil {
			return err
		}
		boots = append(boots, b)
	}
	deb := &boot{Name: "debian mkinitramfs", Initrd: filepath.Join(dir, "debian.img")}
	var err error
	if deb.BuildSeconds, err = timed("mkinitramfs", "-o", deb.Initrd, version); err != nil {
		return err
	}
	boots = append(boots, deb)
	for _, b := range boots {
		st, err := os.Stat(b.Initrd)
		if err != nil {
			return err
		}
		b.InitrdBytes = st.Size()
		uki := strings.TrimSuffix(b.Initrd, ".img") + ".efi"
		if err := sh(vessel, "boot", "uki", "--kernel", kernel, "--initrd", b.Initrd, "--cmdline", "console=ttyS0",
			"--key", filepath.Join(keys, "db.key"), "--cert", filepath.Join(keys, "db.crt"), "-o", uki); err != nil {
			return err
		}
		esp := filepath.Join(dir, "esp-"+filepath.Base(uki))
		if err := os.MkdirAll(filepath.Join(esp, "EFI", "BOOT"), 0o755); err != nil {
			return err
		}
		if err := os.Rename(uki, filepath.Join(esp, "EFI", "BOOT", "BOOTX64.EFI")); err != nil {
			return err
		}
		var runs []boot
		for i := 0; i < repeat; i++ {
			r := *b
			if err := measure(&r, esp, vars); err != nil {
				return fmt.Errorf("%s: %w", b.Name, err)
			}
			runs = append(runs, r)
		}
		sort.Slice(runs, func(i, j int) bool { return runs[i].FirstUserS < runs[j].FirstUserS })
		*b = runs[len(runs)/2]
	}
	if jsonOut {
		return json.NewEncoder(os.Stdout).Encode(boots)
	}
	fmt.Printf("kernel %s, qemu TCG + OVMF Secure Boot + swtpm, median of %d boot(s) each\n\n", version, repeat)
	fmt.Printf("%-20s %10s %8s %9s %8s %8s %10s %10s\n", "initrd", "size", "build", "firmware", "kernel", "initrd", "1st-user", "wall")
	for _, b := range boots {
		fmt.Printf("%-20s %9.1fM %7.2fs %8.2fs %7.2fs %7.2fs %9.2fs %9.2fs\n", b.Name, float64(b.InitrdBytes)/(1<<20), b.BuildSeconds,
			b.FirmwareS, b.KernelS, b.InitrdS, b.FirstUserS, b.WallToMarkerS)
	}
	fmt.Println()
	for _, b := range boots[:3] {
		fmt.Printf("%s / debian: size %.2f, time to first userspace line %.2f, build time %.3f (targets: size <= 0.5, time <= 0.5)\n",
			b.Name, float64(b.InitrdBytes)/float64(deb.InitrdBytes), b.FirstUserS/deb.FirstUserS, b.BuildSeconds/deb.BuildSeconds)
	}
	return nil
}

func kernelTree() (string, string, bool) {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	for i := len(ks) - 1; i >= 0; i-- {
		m := "/lib/modules/" + strings.TrimPrefix(filepath.Base(ks[i]), "vmlinuz-")
		if _, err := os.Stat(m); err == nil {
			return ks[i], m, true
		}
	}
	return "", "", false
}

// measure boots the ESP once and fills in the split.
func measure(b *boot, esp, vars string) error {
	vm, err := vmtest.Start(vmtest.Config{ESPDir: esp, Vars: vars, TPM: true, Timeout: 5 * time.Minute})
	if err != nil {
		return err
	}
	defer vm.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	marker, err := vm.Wait(ctx, "vessel-init: started", "Loading, please wait...")
	if err != nil {
		return fmt.Errorf("%w\n%s", err, vm.Tail(30))
	}
	first, _ := vm.Find(marker)
	runInit, ok := vm.Find("Run /init as init process")
	if !ok {
		return fmt.Errorf("no 'Run /init as init process' line (is printk time on?)")
	}
	m := printkTS.FindStringSubmatch(runInit.Text)
	if m == nil {
		return fmt.Errorf("no printk timestamp in %q", runInit.Text)
	}
	b.KernelS, _ = strconv.ParseFloat(m[1], 64)
	// The kernel started (printk 0) this long before the host saw "Run /init".
	kernelStart := runInit.At.Seconds() - b.KernelS
	b.FirmwareS = kernelStart
	b.InitrdS = first.At.Seconds() - runInit.At.Seconds()
	b.FirstUserS = first.At.Seconds() - kernelStart
	b.WallToMarkerS = first.At.Seconds()
	b.FirstUserLine = first.Text
	if i := strings.Index(first.Text, "uptime "); i >= 0 {
		fmt.Sscanf(first.Text[i:], "uptime %fs", &b.GuestUptimeS)
		b.InitrdS = b.GuestUptimeS - b.KernelS // both on the guest clock
		b.FirstUserS = b.GuestUptimeS
	}
	return nil
}
