package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// updateCmdline boots to the services with the vessel.test=update hook
// (PID 1 stages a manifest the test left on the data partition),
// panic=5 (a kernel panic reboots, which ends qemu under -no-reboot) and
// the hardware watchdog (vessel.watchdog=20 with Config.Watchdog: a hang
// resets, which ends qemu too; every boot here must keep it fed).
const updateCmdline = "console=ttyS0 vessel.test=root,services,update vessel.ip=10.0.2.15/24 panic=5 vessel.watchdog=" + updateWatchdog

// updateWatchdog is the watchdog timeout of TestUpdate's boots, seconds.
const updateWatchdog = "20"

// updateFixture is one product in versions 1 to 4 and a disk with
// version 1 installed and version 2 staged offline (a trial armed).
// Version 3's service fails its health command; version 4 is healthy.
type updateFixture struct {
	dir, store, disk string
	v                func(args ...string) string
	digests          map[int]string // manifest digests by version
}

func makeUpdateFixture(t *testing.T, e *bootEnv) *updateFixture {
	t.Helper()
	needDiskTools(t, "runc")
	f := &updateFixture{dir: filepath.Join(e.dir, "update"), digests: map[int]string{}}
	dir := f.dir
	hostTree(t, dir, e.vessel, true)
	f.store = filepath.Join(dir, "store")
	f.v = vesselIn(t, e.vessel, dir, f.store)
	f.v("image", "create", "host:1", "--layer", "busybox", "--layer", "vessel", "--layer", "runc")
	for n := 1; n <= 3; n++ {
		www := filepath.Join(dir, fmt.Sprintf("www%d", n), "www")
		os.MkdirAll(www, 0o755)
		os.WriteFile(filepath.Join(www, "index.html"), []byte(fmt.Sprintf("version %d\n", n)), 0o644)
		f.v("image", "create", fmt.Sprintf("web:%d", n), "--layer", "busybox", "--layer", filepath.Dir(www))
	}
	f.v("keys", "init", "keys", "--org", "Acme")
	f.v("keys", "product", "keys", "--name", "acme", "--product-id", productID)
	good := `["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"]`
	// version 3's check fails after 4 s: long enough for its web page to
	// answer once (the downtime measurement), then the trial fails
	bad := `["/bin/sh", "-c", "sleep 4; exit 1"]`
	for n, c := range map[int]struct {
		web    int
		health string
	}{1: {1, good}, 2: {2, good}, 3: {3, bad}, 4: {3, good}} {
		sys := fmt.Sprintf("product: acme\nversion: %d\nhostfs: host:1\nhealthSeconds: 5\nservices:\n  - name: web\n    image: web:%d\n"+
			"    command: [/bin/sh, -c, '%s']\n    network: host\n    health: %s\n", n, c.web, httpd(8080, "/www"), c.health)
		name := fmt.Sprintf("v%d", n)
		os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(sys), 0o644)
		f.v("manifest", "build", name+".yaml", "--keys", "keys", "-o", name+".json")
		f.v("manifest", "sign", name+".json", "--key", "keys/products/acme/product.key", "--cert", "keys/products/acme/product.pem", "-o", name+".signed")
		var sum struct {
			Digest string `json:"digest"`
		}
		if err := json.Unmarshal([]byte(f.v("--json", "manifest", "verify", name+".signed", "--ca", "keys/manifest-ca.pem", "--no-record")), &sum); err != nil {
			t.Fatal(err)
		}
		f.digests[n] = sum.Digest
	}
	initrd := filepath.Join(dir, "initrd.img")
	f.v("boot", "initrd", "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--modules", e.modules, "-o", initrd)
	uki := filepath.Join(dir, "update.efi")
	f.v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", updateCmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", uki)
	f.disk = filepath.Join(dir, "disk.img")
	f.v("boot", "disk", "--manifest", "v1.signed", "--uki", uki, "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--size", "600M", "-o", f.disk)
	return f
}

// onData mounts the data partition of the disk image (loop, at its
// offset), runs fn on it, and unmounts.
func onData(t *testing.T, img string, fn func(mnt string)) {
	withPartition(t, img, "vessel-data", fn)
}

// incoming leaves version n and the build store on the data partition
// for the vessel.test=update hook.
func (f *updateFixture) incoming(t *testing.T, mnt string, n int) {
	t.Helper()
	in := filepath.Join(mnt, "incoming")
	if _, err := os.Stat(filepath.Join(in, "store")); err != nil {
		os.MkdirAll(in, 0o755)
		run(t, "cp", "-a", f.store, filepath.Join(in, "store"))
	}
	run(t, "cp", filepath.Join(f.dir, fmt.Sprintf("v%d.signed", n)), filepath.Join(in, "update.signed"))
}

type slotStatus struct {
	Default string `json:"default"`
	Slots   []struct {
		Name    string `json:"name"`
		Version int64  `json:"version"`
		Digest  string `json:"digest"`
	} `json:"slots"`
	Trial *struct {
		Slot string `json:"slot"`
	} `json:"trial"`
	Last *struct {
		Version int64  `json:"version"`
		Outcome string `json:"outcome"`
		Why     string `json:"why"`
	} `json:"last"`
	Accepted int64 `json:"acceptedVersion"`
}

func (s slotStatus) version(slot string) int64 {
	for _, sl := range s.Slots {
		if sl.Name == slot {
			return sl.Version
		}
	}
	return 0
}

// status reads the slot record with vessel update status --json, and
// verifies every image a slot references with vessel image verify.
func (f *updateFixture) status(t *testing.T, mnt string) slotStatus {
	t.Helper()
	v := vesselIn(t, filepath.Join(f.dir, "vessel", "sbin", "init"), f.dir, mnt)
	var s slotStatus
	out := v("--json", "update", "status")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("update status --json: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(mnt, "system", "slots.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Slots map[string]struct {
			Images []struct{ Digest string } `json:"images"`
		} `json:"slots"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sl := range rec.Slots {
		for _, im := range sl.Images {
			v("image", "verify", im.Digest) // fails the test unless every layer verifies
			n++
		}
	}
	if n == 0 {
		t.Fatal("the slot record references no image: nothing was verified")
	}
	return s
}

// poller fetches the guest's web page through hostfwd every 200 ms and
// records when each version last and first answered.
type poller struct {
	mu          sync.Mutex
	first, last map[string]time.Time
}

func (p *poller) run(ctx context.Context, port int) {
	c := http.Client{Timeout: 2 * time.Second}
	for ctx.Err() == nil {
		if resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", port)); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			now := time.Now()
			body := strings.TrimSpace(string(b))
			p.mu.Lock()
			if _, ok := p.first[body]; !ok {
				p.first[body] = now
			}
			p.last[body] = now
			p.mu.Unlock()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// bootUntil boots the disk (a power cycle: new qemu, same disk, the
// machine's NVRAM or, with nvram "", a fresh copy of the VARS template) and
// waits until a marker appears.
func bootUntil(t *testing.T, e *bootEnv, disk, nvram string, port int, markers ...string) *VM {
	t.Helper()
	vm := StartT(t, Config{Disk: disk, Vars: e.vars, NVRAM: nvram, MemoryMB: 768, Monitor: true, Timeout: 8 * time.Minute, Watchdog: true,
		Net: []string{fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:8080", port)}})
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
	defer cancel()
	if len(markers) > 0 {
		if _, err := vm.Wait(ctx, markers...); err != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(60))
		}
	}
	return vm
}

func mustFind(t *testing.T, vm *VM, s string) string {
	t.Helper()
	l, ok := vm.Find(s)
	if !ok {
		t.Fatalf("no %q on the console:\n%s", s, vm.Tail(60))
	}
	return l.Text
}

// TestUpdate: version 1 -> 2 (staged offline, trial boot, health check
// passes: the default, version 2 accepted) -> 3 staged on the machine by
// vessel update (only the changed image fetched), whose health check
// fails: the trial boot reboots by itself into version 2, the record says
// why, the accepted version stays 2 -> a downgrade to 1 is refused. In
// parallel with boots 3 and 4, from a copy of the disk after boot 2 with
// version 4 waiting: power cuts (SIGKILL of qemu) at random moments; every
// next boot comes up on version 2, 3 (its trial) or 4, never neither, and
// every image a slot references verifies. VESSEL_VM_SOAK=N sets the number
// of power-cut trials (default 2; make vm-soak runs 10).
func TestUpdate(t *testing.T) {
	e := setupBoot(t)
	f := makeUpdateFixture(t, e)
	// offline: stage version 2 with vessel update on the data partition
	onData(t, f.disk, func(mnt string) {
		out := vesselIn(t, e.vessel, f.dir, mnt)("update", "v2.signed", "--from", f.store, "--ca", "keys/manifest-ca.pem", "--product-id", productID)
		if !strings.Contains(out, "staged version 2 (") || !strings.Contains(out, "in slot b") {
			t.Fatalf("offline stage: %s", out)
		}
		f.incoming(t, mnt, 3)
	})
	// the sequence makes the power cuts' starting disk after boot 2 and
	// runs them beside boots 3-4: subtests started from goroutines (no
	// t.Parallel: a subtest waiting for the disk must not hold one of the
	// -parallel slots the sequence needs, which deadlocked on 2 CPUs)
	trials := 2
	if n, err := strconv.Atoi(os.Getenv("VESSEL_VM_SOAK")); err == nil && n > 0 {
		trials = n
	}
	t.Run("sequence", func(t *testing.T) {
		var cuts sync.WaitGroup
		defer cuts.Wait() // every t.Run returns before the sequence does
		{
			port := freePort(t)
			p := &poller{first: map[string]time.Time{}, last: map[string]time.Time{}}
			ctx, stopPoll := context.WithCancel(context.Background())
			defer stopPoll()
			go p.run(ctx, port)

			// boot 2: the trial of version 2 passes and stages version 3
			vm := bootUntil(t, e, f.disk, "", port, "vessel-host: rebooting", "vessel-host: powering off", "FAILED")
			mustFind(t, vm, "vessel-init: slot b: trial boot of version 2 (try taken, 0 left; default slot a version 1)")
			mustFind(t, vm, "vessel-host: up (manifest "+f.digests[2]+", version 2)")
			mustFind(t, vm, "vessel-host: trial boot of slot b confirmed: it is the default slot now")
			staged := mustFind(t, vm, "staged version 3 (")
			fetched := mustFind(t, vm, "  fetched ")
			mustFind(t, vm, "vessel-host: vessel.test=update: staged, rebooting into the trial")
			mustFind(t, vm, "vessel-host: rebooting")
			if l, ok := vm.Find("FAILED"); ok {
				t.Fatalf("%s\n%s", l.Text, vm.Tail(60))
			}
			t.Logf("boot 2: %s; %s", staged, strings.TrimSpace(fetched))
			t.Logf("boot 2: %s", watchdogFed(t, vm))
			vm.WaitExit(context.Background())
			boot2Exit := time.Now()
			// the power cuts start from here: version 2 the default, version 3's
			// trial armed, version 4 waiting on the partition to be staged
			cut := filepath.Join(f.dir, "cut.img")
			run(t, "cp", "--sparse=always", f.disk, cut)
			// version 4 brings its own UKI: staging writes the ESP and the
			// firmware's variables, and the trial boots it through BootNext
			cutUKI := filepath.Join(f.dir, "uki-cut.efi")
			f.v("boot", "uki", "--kernel", e.kernel, "--initrd", filepath.Join(f.dir, "initrd.img"), "--cmdline", updateCmdline+" vessel.uki=cut",
				"--key", e.dbKey, "--cert", e.dbCert, "-o", cutUKI)
			onData(t, cut, func(mnt string) {
				f.incoming(t, mnt, 4)
				run(t, "cp", cutUKI, filepath.Join(mnt, "incoming", "kernel.efi"))
			})
			for i := 0; i < trials; i++ {
				cuts.Add(1)
				go func() {
					defer cuts.Done()
					t.Run(fmt.Sprintf("power-cut-%d", i), func(t *testing.T) { powerCutTrial(t, e, f, cut, i) })
				}()
			}

			// boot 3: version 3 fails its health check and reboots
			vm = bootUntil(t, e, f.disk, "", port, "vessel-host: rebooting", "vessel-host: powering off", "vessel-init: powering off")
			mustFind(t, vm, "vessel-init: slot a: trial boot of version 3")
			failed := mustFind(t, vm, "failed its health check")
			if _, ok := vm.Find("vessel-host: trial boot of slot a confirmed"); ok {
				t.Fatal("version 3 was confirmed")
			}
			vm.WaitExit(context.Background())
			stopPoll()
			p.mu.Lock()
			lastV2, firstV3 := p.last["version 2"], p.first["version 3"]
			p.mu.Unlock()
			if !lastV2.IsZero() && !firstV3.IsZero() {
				// split: the test's own work between the two qemu runs
				// (copying the disk for the power cuts), the firmware (qemu
				// start to kernel start), and the rest (guest shutdown,
				// kernel, initrd, services)
				gap := vm.Started.Sub(boot2Exit)
				fw := time.Duration(0)
				if l, ok := vm.Find("vessel-init: started"); ok {
					if m := regexp.MustCompile(`uptime ([0-9.]+)s`).FindStringSubmatch(l.Text); m != nil {
						up, _ := strconv.ParseFloat(m[1], 64)
						fw = l.At - time.Duration(up*float64(time.Second))
					}
				}
				total := firstV3.Sub(lastV2)
				t.Logf("downtime from the last answer of version 2 to the first of version 3: %.1fs = test harness between the qemu runs %.1fs + firmware (OVMF, TCG) %.1fs + the rest (v2 shutdown, kernel, initrd, v3 services) %.1fs",
					total.Seconds(), gap.Seconds(), fw.Seconds(), (total - gap - fw).Seconds())
			} else {
				t.Logf("downtime not measured: version 2 answered at %v, version 3 at %v", lastV2, firstV3)
			}
			t.Logf("boot 3: %s", failed)
			onData(t, f.disk, func(mnt string) {
				s := f.status(t, mnt)
				if s.Default != "b" || s.version("b") != 2 || s.version("a") != 3 || s.Trial != nil || s.Accepted != 2 {
					t.Fatalf("after the failed trial: %+v", s)
				}
				if s.Last == nil || s.Last.Version != 3 || s.Last.Outcome != "failed" || !strings.Contains(s.Last.Why, "health command") {
					t.Fatalf("last result %+v", s.Last)
				}
				t.Logf("status after the failed trial: last %+v", *s.Last)
				f.incoming(t, mnt, 1) // a downgrade
			})

			// boot 4: version 2 again; the downgrade to 1 is refused
			vm = bootUntil(t, e, f.disk, "", port, "vessel-host: vessel.test=update: not staged", "vessel-host: rebooting", "FAILED")
			mustFind(t, vm, "vessel-host: up (manifest "+f.digests[2]+", version 2)")
			if _, ok := vm.Find("trial boot"); ok {
				t.Fatalf("boot 4 is a trial:\n%s", vm.Tail(40))
			}
			refused := mustFind(t, vm, "refused")
			t.Logf("boot 4: %s", refused)
			// The host's PID 1 keeps the watchdog fed: the guest is still
			// running 2.5 timeouts after PID 1 took it over (a guest that
			// stopped pinging is reset, ending qemu, within one or two), and
			// then powers off cleanly by the power button (120 s window).
			host := watchdogLine(t, vm)
			if d := 50*time.Second - (time.Since(vm.Started) - host.At); d > 0 {
				time.Sleep(d)
			}
			if done, err := vm.Exited(); done {
				t.Fatalf("qemu exited (%v) before the power button, less than 50s after the guest's PID 1 took the watchdog over: reset by it? Its serial ends %.1fs after that line:\n%s",
					err, (vm.Lines()[len(vm.Lines())-1].At - host.At).Seconds(), vm.Tail(40))
			}
			if err := vm.Monitor("system_powerdown"); err != nil {
				t.Fatal(err)
			}
			ctx2, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			vm.WaitExit(ctx2)
			mustFind(t, vm, "vessel-host: powering off")
			t.Logf("boot 4: %s", watchdogFed(t, vm))
			onData(t, f.disk, func(mnt string) {
				if s := f.status(t, mnt); s.Default != "b" || s.Accepted != 2 {
					t.Fatalf("after the refused downgrade: %+v", s)
				}
			})
		}
	})
}

// powerCutTrial copies the disk (version 2 the default, version 3's trial
// armed, version 4 waiting to be staged on the machine), boots it until two
// (three under VESSEL_VM_SOAK) SIGKILLs of qemu at a random moment 0-30 s
// after the kernel started hit a running machine (during a trial
// boot, its health check, or staging), then once more to the services:
// that boot must run version 2, 4, or 3 as a trial (it never passes), the
// default slot must hold 2 or 4, and every image a slot references must
// verify.
func powerCutTrial(t *testing.T, e *bootEnv, f *updateFixture, src string, i int) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	nvram := filepath.Join(t.TempDir(), "nvram.fd") // this machine's own
	run(t, "cp", "--sparse=always", src, disk)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))
	var cuts []string
	real := 0
	cutBoots := 2 // make test
	if os.Getenv("VESSEL_VM_SOAK") != "" {
		cutBoots = 3
	}
	// boots that end by themselves before their cut do not count: boot
	// again until cutBoots cuts hit a running machine (at most 3x as many
	// boots)
	for b := 0; real < cutBoots && b < 3*cutBoots; b++ {
		port := freePort(t)
		vm := StartT(t, Config{Disk: disk, Vars: e.vars, NVRAM: nvram, MemoryMB: 768, Timeout: 8 * time.Minute, Watchdog: true,
			Net: []string{fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:8080", port)}})
		// the firmware takes 15-80 s under TCG; cut somewhere after the
		// kernel started, mostly while the host stages or checks
		ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
		_, err := vm.Wait(ctx, "vessel-init: started")
		cancel()
		if err != nil {
			if done, _ := vm.Exited(); done {
				continue
			}
			t.Fatalf("boot %d: %v\n%s", b, err, vm.Tail(40))
		}
		// the boots that end by themselves (a failed trial, a staging
		// boot) reboot 15-50 s after the kernel started
		delay := time.Duration(rng.IntN(30000)) * time.Millisecond
		how := "cut"
		select {
		case <-time.After(delay):
		case <-exitedCh(vm):
			how = "ended by itself before its cut at"
		}
		last := lastVessel(vm)
		vm.Kill()
		if how == "cut" {
			real++
		}
		cuts = append(cuts, fmt.Sprintf("boot %d %s %.1fs after the kernel (last line: %s)", b, how, delay.Seconds(), last))
	}
	t.Logf("%d power cuts hit a running machine:\n%s", real, strings.Join(cuts, "\n"))
	if real == 0 {
		t.Fatal("no power cut hit a running machine: the trial proves nothing")
	}
	port := freePort(t)
	// is version 4 still waiting to be staged (the hook removes it once
	// staged)?
	pending := false
	onData(t, disk, func(mnt string) {
		_, err := os.Stat(filepath.Join(mnt, "incoming", "update.signed"))
		pending = err == nil
	})
	vm := bootUntil(t, e, disk, nvram, port, "vessel-host: services up", "vessel-init: powering off", "FAILED")
	up := mustFind(t, vm, "vessel-host: up (manifest ")
	if !strings.Contains(up, "version 2)") && !strings.Contains(up, "version 3)") && !strings.Contains(up, "version 4)") {
		t.Fatalf("after power cuts the machine runs none of versions 2, 3 (its trial) and 4: %s\n%s", up, vm.Tail(40))
	}
	// version 4 came with its own UKI: it runs on that kernel, and the
	// others do not
	if cut := strings.Contains(mustFind(t, vm, "Kernel command line:"), "vessel.uki=cut"); cut != strings.Contains(up, "version 4)") {
		t.Fatalf("%s on the UKI of version 4: %v\n%s", up, cut, vm.Tail(40))
	}
	// if version 4 is still waiting, let the machine finish what it does
	// next: stage it with its UKI over whatever an interrupted staging left,
	// or end version 3's trial
	if pending {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		next, err := vm.Wait(ctx, "vessel.test=update: staged", "vessel.test=update: not staged", "vessel-host: rebooting", "FAILED")
		cancel()
		if err != nil || next == "FAILED" {
			t.Fatalf("after the cuts: %v\n%s", err, vm.Tail(40))
		}
		t.Logf("after the cuts the machine went on: %s", lastVessel(vm))
	}
	vm.Kill()
	var ukis map[string]string // ESP file -> SHA-256, for every UKI a slot names
	onData(t, disk, func(mnt string) {
		s := f.status(t, mnt)
		if dv := s.version(s.Default); dv != 2 && dv != 4 {
			t.Fatalf("default slot %s runs version %d", s.Default, dv)
		}
		t.Logf("after the cuts: %s; default %s (version %d), accepted %d", up, s.Default, s.version(s.Default), s.Accepted)
		ukis = slotUKIs(t, mnt)
	})
	// every UKI a slot names is on the ESP, whole (FAT has no atomic
	// rename: staging's write order must make that hold anyway)
	start, _ := partitionAt(t, disk, "EFI System Partition")
	for file, sum := range ukis {
		out, err := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", disk, start), "::/"+file).Output()
		if err != nil {
			t.Fatalf("the ESP lacks %s, named by the slot record: %v", file, err)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(out)); got != sum {
			t.Fatalf("%s on the ESP has SHA-256 %s, the slot record says %s", file, got, sum)
		}
	}
	t.Logf("the ESP holds the %d UKIs the slots name, whole", len(ukis))
}

// slotUKIs reads the UKIs the slot record names (file -> SHA-256).
func slotUKIs(t *testing.T, mnt string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(mnt, "system", "slots.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Slots map[string]*struct {
			UKI *struct{ File, SHA256 string } `json:"uki"`
		} `json:"slots"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, sl := range rec.Slots {
		if sl != nil && sl.UKI != nil {
			out[sl.UKI.File] = sl.UKI.SHA256
		}
	}
	return out
}

func exitedCh(vm *VM) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for {
			if done, _ := vm.Exited(); done {
				close(ch)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	return ch
}

var vesselLine = regexp.MustCompile(`^vessel-(init|host):`)

func lastVessel(vm *VM) string {
	ls := vm.Lines()
	for i := len(ls) - 1; i >= 0; i-- {
		if vesselLine.MatchString(ls[i].Text) {
			return ls[i].Text
		}
	}
	return "(none)"
}

// watchdogLine is the host's PID 1 taking over the initrd's armed
// i6300ESB (vessel.watchdog=20 in updateCmdline); the initrd armed it.
func watchdogLine(t *testing.T, vm *VM) Line {
	t.Helper()
	armed := mustFind(t, vm, "vessel-init: watchdog: ")
	if !strings.HasPrefix(armed, "vessel-init: watchdog: /dev/watchdog0 (i6300ESB timer) armed, "+updateWatchdog+" s") {
		t.Fatalf("the initrd did not arm the i6300ESB: %s", armed)
	}
	l, ok := vm.Find("vessel-host: watchdog: ")
	if !ok || !strings.Contains(l.Text, "(i6300ESB timer) from the initrd, "+updateWatchdog+" s: pinged every 5s") {
		t.Fatalf("the host's PID 1 did not take the watchdog over: %q\n%s", l.Text, vm.Tail(60))
	}
	return l
}

// watchdogFed says how long the guest ran after its PID 1 took the
// watchdog over (the boot ended by itself, cleanly: the caller checked).
func watchdogFed(t *testing.T, vm *VM) string {
	t.Helper()
	l := watchdogLine(t, vm)
	end := time.Since(vm.Started)
	if ls := vm.Lines(); len(ls) > 0 {
		end = ls[len(ls)-1].At
	}
	return fmt.Sprintf("the host's PID 1 fed the watchdog (%s s) for %.1fs until its clean end: %s", updateWatchdog, (end - l.At).Seconds(), l.Text)
}
