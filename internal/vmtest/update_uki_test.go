package vmtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ukiMachine is one machine of TestUpdateUKI: a disk and its own NVRAM
// (the firmware's variables: boot entries, BootOrder, BootNext), kept
// across boots like a real machine's.
type ukiMachine struct {
	e                     *bootEnv
	f                     *updateFixture
	disk, nvram, tpmState string
}

// boot powers the machine on and waits until one of markers appears (or
// qemu ends by itself, when markers is empty).
func (m *ukiMachine) boot(t *testing.T, markers ...string) *VM {
	t.Helper()
	// the services need a network interface (vessel.ip): a hostfwd rule
	// to an unused port gives them one
	vm := StartT(t, Config{Disk: m.disk, Vars: m.e.vars, NVRAM: m.nvram, TPM: true, TPMState: m.tpmState, Watchdog: true, MemoryMB: 768, Monitor: true, Timeout: 8 * time.Minute,
		Net: []string{fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:8080", freePort(t))}})
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
	defer cancel()
	if len(markers) == 0 {
		if err := vm.WaitExit(ctx); err != nil && ctx.Err() != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(60))
		}
		return vm
	}
	if _, err := vm.Wait(ctx, markers...); err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(60))
	}
	return vm
}

// powerOff presses the power button and waits for qemu to end.
func (m *ukiMachine) powerOff(t *testing.T, vm *VM) {
	t.Helper()
	if err := vm.Monitor("system_powerdown"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := vm.WaitExit(ctx); err != nil && ctx.Err() != nil {
		t.Fatal(err)
	}
}

// incoming leaves version n and, if uki is not "", that UKI for the
// vessel.test=update hook ("" version 0: nothing).
func (m *ukiMachine) incoming(t *testing.T, n int, uki string) {
	t.Helper()
	onData(t, m.disk, func(mnt string) {
		in := filepath.Join(mnt, "incoming")
		if n == 0 {
			os.RemoveAll(in)
			return
		}
		m.f.incoming(t, mnt, n)
		os.Remove(filepath.Join(in, "kernel.efi"))
		if uki != "" {
			run(t, "cp", uki, filepath.Join(in, "kernel.efi"))
		}
	})
}

func cmdlineOf(t *testing.T, vm *VM) string {
	t.Helper()
	return mustFind(t, vm, "Kernel command line:")
}

// TestUpdateUKI: updates that bring a new UKI (issue 17). The machine's
// firmware variables persist across its boots. Version 1 boots the
// installed UKI and stages version 2 with UKI "b" (vessel update --uki: the
// ESP, a boot entry, BootNext); the firmware boots UKI b once, its trial
// passes, UKI b becomes the first boot entry. Then version 4 with a UKI
// whose kernel panics (no init: rdinit=/nonexistent, panic=5): the
// firmware's one-shot is spent on it, the next boot starts UKI b again and
// its initrd records the trial as failed (its UKI never took its try),
// version 2 runs and stages version 4 again with a UKI whose initrd hangs
// after arming the watchdog (vessel.watchdog=20, vessel.test=hang): the
// i6300ESB resets the machine and the next boot falls back the same way.
// The machine has a vTPM (state kept across
// boots) and an initrd with the TPM policy key: the NV counter does not
// move during the trial of version 2, follows its confirm (version 2
// accepted at boot 3) and stays at 2 after the failed version 4. Every
// step is read from the console and the slot record, and every referenced
// image verifies.
func TestUpdateUKI(t *testing.T) {
	e := setupBoot(t)
	f := makeUpdateFixture(t, e)
	needDiskTools(t, "openssl", "cryptsetup")
	// This machine has a TPM: an initrd with the TPM policy key, a state
	// partition, and the signed policy for the PCR7 of these firmware
	// variables (predicted offline).
	polKey, polPub, pol := filepath.Join(f.dir, "policy.key"), filepath.Join(f.dir, "policy.pub"), filepath.Join(f.dir, "policy.signed")
	run(t, "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", polKey)
	run(t, "openssl", "pkey", "-in", polKey, "-pubout", "-out", polPub)
	pcr7 := strings.TrimSpace(f.v("tpm", "pcr7", "predict", "--vars", e.vars, "--signer", e.dbCert))
	f.v("tpm", "policy", "sign", "--key", polKey, "--pcr7", pcr7, "-o", pol)
	initrd := filepath.Join(f.dir, "initrd-tpm.img")
	f.v("boot", "initrd", "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--modules", e.modules, "--tpm-policy-key", polPub, "-o", initrd)
	ukis := map[string]string{}
	for name, cmdline := range map[string]string{
		"installed": updateCmdline,
		"b":         updateCmdline + " vessel.uki=b",
		"panic":     "console=ttyS0 rdinit=/nonexistent panic=5 vessel.uki=panic",
		"hang":      updateCmdline + " vessel.test=hang vessel.uki=hang",
	} {
		ukis[name] = filepath.Join(f.dir, "uki-"+name+".efi")
		f.v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", cmdline,
			"--key", e.dbKey, "--cert", e.dbCert, "-o", ukis[name])
	}
	m := &ukiMachine{e: e, f: f, disk: filepath.Join(f.dir, "disk-tpm.img"), nvram: filepath.Join(f.dir, "nvram.fd"), tpmState: filepath.Join(f.dir, "vtpm")}
	os.MkdirAll(m.tpmState, 0o700)
	f.v("boot", "disk", "--manifest", "v1.signed", "--uki", ukis["installed"], "--ca", "keys/manifest-ca.pem", "--product-id", productID,
		"--size", "600M", "--state-size", "32M", "--tpm-policy", pol, "-o", m.disk)

	// boot 1: version 1 on the installed UKI stages version 2 with UKI b
	m.incoming(t, 2, ukis["b"])
	vm := m.boot(t, "vessel-host: rebooting", "vessel-host: powering off", "FAILED", "not staged")
	if l, ok := vm.Find("FAILED"); ok {
		t.Fatalf("%s\n%s", l.Text, vm.Tail(60))
	}
	mustFind(t, vm, "vessel-host: up (manifest "+f.digests[1]+", version 1)")
	mustFind(t, vm, "vessel-init: TPM: manifest version 1 >= accepted version")
	armed := mustFind(t, vm, "armed as the firmware's one-shot BootNext")
	mustFind(t, vm, "vessel-host: vessel.test=update: staged, rebooting into the trial")
	t.Logf("boot 1: %s", strings.TrimSpace(armed))
	vm.WaitExit(context.Background())
	m.incoming(t, 0, "")

	// boot 2: the firmware starts UKI b once; its trial passes
	vm = m.boot(t, "vessel-host: trial boot of slot b confirmed", "vessel-host: rebooting", "FAILED")
	if cl := cmdlineOf(t, vm); !strings.Contains(cl, "vessel.uki=b") {
		t.Fatalf("boot 2 did not start UKI b: %s", cl)
	}
	mustFind(t, vm, "vessel-init: slot b: trial boot of version 2")
	mustFind(t, vm, "vessel-host: up (manifest "+f.digests[2]+", version 2)")
	// a trial does not move the TPM's counter; its confirm does (checked
	// at boot 3)
	if l, ok := vm.Find("accepted version advanced"); ok {
		t.Fatalf("the trial boot advanced the counter: %s", l.Text)
	}
	m.powerOff(t, vm)
	onData(t, m.disk, func(mnt string) {
		s := f.status(t, mnt)
		if s.Default != "b" || s.version("b") != 2 || s.Accepted != 2 || s.Last == nil || s.Last.Outcome != "good" {
			t.Fatalf("after UKI b's trial: %+v", s)
		}
	})

	// boot 3: UKI b is now the firmware's default (BootOrder): version 2
	// stages version 4 with the panicking UKI
	m.incoming(t, 4, ukis["panic"])
	vm = m.boot(t, "vessel-host: rebooting", "vessel-host: powering off", "FAILED", "not staged")
	if cl := cmdlineOf(t, vm); !strings.Contains(cl, "vessel.uki=b") {
		t.Fatalf("boot 3 (BootOrder) did not start UKI b: %s", cl)
	}
	if _, ok := vm.Find("trial boot"); ok {
		t.Fatalf("boot 3 is a trial:\n%s", vm.Tail(40))
	}
	counter := mustFind(t, vm, "vessel-init: TPM: manifest version 2 >= accepted version 2 (NV counter)")
	t.Logf("boot 3: %s", counter)
	mustFind(t, vm, "armed as the firmware's one-shot BootNext")
	mustFind(t, vm, "vessel-host: vessel.test=update: staged, rebooting into the trial")
	vm.WaitExit(context.Background())
	m.incoming(t, 0, "")

	// boot 4: the one-shot starts the panicking UKI; panic=5 reboots,
	// which ends qemu
	vm = m.boot(t)
	if cl := cmdlineOf(t, vm); !strings.Contains(cl, "vessel.uki=panic") {
		t.Fatalf("boot 4 did not start the new UKI: %s", cl)
	}
	panicLine := mustFind(t, vm, "Kernel panic")
	t.Logf("boot 4: %s", panicLine)

	// boot 5: back on UKI b; the initrd records the trial as failed and
	// boots version 2, which stages version 4 again, now with a UKI whose
	// initrd hangs (vessel.test=hang, after arming the watchdog)
	m.incoming(t, 4, ukis["hang"])
	vm = m.boot(t, "vessel-host: rebooting", "vessel-host: powering off", "FAILED", "not staged")
	if cl := cmdlineOf(t, vm); !strings.Contains(cl, "vessel.uki=b") {
		t.Fatalf("boot 5 did not fall back to UKI b: %s", cl)
	}
	failed := mustFind(t, vm, "never took its try")
	mustFind(t, vm, "vessel-host: up (manifest "+f.digests[2]+", version 2)")
	mustFind(t, vm, "vessel-init: TPM: manifest version 2 >= accepted version 2 (NV counter)")
	mustFind(t, vm, "vessel-host: vessel.test=update: staged, rebooting into the trial")
	removed := mustFind(t, vm, "removed from the ESP") // the panicking UKI: no slot names it now
	t.Logf("boot 5: %s; %s", failed, strings.TrimSpace(removed))
	vm.WaitExit(context.Background())
	m.incoming(t, 0, "")

	// boot 6: the one-shot starts the hanging UKI; the i6300ESB watchdog
	// resets the machine, which ends qemu
	vm = m.boot(t, "vessel-init: test hook: hanging", "Kernel panic", "FAILED")
	if cl := cmdlineOf(t, vm); !strings.Contains(cl, "vessel.uki=hang") {
		t.Fatalf("boot 6 did not start the hanging UKI: %s", cl)
	}
	hang := mustLine(t, vm, "vessel-init: test hook: hanging")
	mustFind(t, vm, "vessel-init: watchdog: /dev/watchdog0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := vm.WaitExit(ctx); err != nil && ctx.Err() != nil {
		t.Fatalf("the hung trial was not reset: %v\n%s", err, vm.Tail(40))
	}
	if l, ok := vm.Find("Kernel panic"); ok {
		t.Fatalf("boot 6 panicked instead of hanging: %s", l.Text)
	}
	t.Logf("boot 6: %s; qemu ended %.1fs later (the watchdog's reset)", hang.Text, (time.Since(vm.Started) - hang.At).Seconds())

	// boot 7: back on UKI b, version 2 again
	vm = m.boot(t, "vessel-host: services up", "FAILED", "vessel-init: powering off")
	if cl := cmdlineOf(t, vm); !strings.Contains(cl, "vessel.uki=b") {
		t.Fatalf("boot 7 did not fall back to UKI b: %s", cl)
	}
	mustFind(t, vm, "never took its try")
	mustFind(t, vm, "vessel-host: up (manifest "+f.digests[2]+", version 2)")
	m.powerOff(t, vm)
	onData(t, m.disk, func(mnt string) {
		s := f.status(t, mnt)
		if s.Default != "b" || s.version("b") != 2 || s.Trial != nil || s.Accepted != 2 {
			t.Fatalf("after the failed UKIs: %+v", s)
		}
		if s.Last == nil || s.Last.Version != 4 || s.Last.Outcome != "failed" || !strings.Contains(s.Last.Why, "never took its try") {
			t.Fatalf("last result %+v", s.Last)
		}
		t.Logf("status after the hanging UKI: last %+v", *s.Last)
	})
}

func mustLine(t *testing.T, vm *VM, s string) Line {
	t.Helper()
	l, ok := vm.Find(s)
	if !ok {
		t.Fatalf("no %q on the console", s)
	}
	return l
}
