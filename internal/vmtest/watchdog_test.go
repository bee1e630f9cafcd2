package vmtest

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// watchdogCmdline arms the watchdog (20 s) and hangs the initrd right
// after: no panic, no exit, the pinger stopped.
const watchdogCmdline = "console=ttyS0 vessel.watchdog=20 vessel.test=hang"

// TestWatchdogHang boots a UKI whose initrd arms the i6300ESB watchdog
// (vessel.watchdog=20, module i6300esb from the default list) and then
// hangs (vessel.test=hang). Nothing in the guest ends that boot: only the
// watchdog's reset (-action watchdog=reset, which ends qemu under
// -no-reboot) does, within a bound, with no kernel panic. One boot, from
// an ESP directory (the initrd never looks for a disk). That the host's
// PID 1 keeps an armed watchdog fed is TestUpdate's part (its boots run
// with vessel.watchdog=20 and would end early otherwise).
func TestWatchdogHang(t *testing.T) {
	e := setupBoot(t)
	uki := filepath.Join(e.dir, "hang.efi")
	run(t, e.vessel, "boot", "uki", "--kernel", e.kernel, "--initrd", e.initrd, "--cmdline", watchdogCmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", uki)
	vm := StartT(t, Config{ESPDir: esp(t, uki), Vars: e.vars, Watchdog: true, Timeout: 8 * time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	m, err := vm.Wait(ctx, "vessel-init: test hook: hanging", "vessel-init: FAILED", "vessel-init: powering off", "Kernel panic")
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(40))
	}
	if m != "vessel-init: test hook: hanging" {
		t.Fatalf("the boot did not reach the hang: %q\n%s", m, vm.Tail(40))
	}
	armed := mustFind(t, vm, "vessel-init: watchdog: ")
	if !strings.HasPrefix(armed, "vessel-init: watchdog: /dev/watchdog0 (i6300ESB timer) armed, 20 s") {
		t.Fatalf("the watchdog is not the armed i6300ESB: %s", armed)
	}
	hang, _ := vm.Find("vessel-init: test hook: hanging, the watchdog must reset the machine")
	if hang.Text == "" {
		t.Fatalf("no hang line:\n%s", vm.Tail(40))
	}
	// The i6300ESB resets after its timeout; bound it generously (TCG on
	// a loaded machine), far below the VM's own deadline.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel2()
	if err := vm.WaitExit(ctx2); err != nil {
		t.Fatalf("the hung guest was not reset: %v\n%s", err, vm.Tail(40))
	}
	exited := time.Since(vm.Started)
	for _, bad := range []string{"Kernel panic", "vessel-init: FAILED", "vessel-init: powering off"} {
		if l, ok := vm.Find(bad); ok {
			t.Fatalf("the hang was not a hang: %s\n%s", l.Text, vm.Tail(40))
		}
	}
	t.Logf("%s\n%s\nqemu ended by itself %.1fs after the hang line (%.1fs after qemu started)",
		armed, hang.Text, (exited - hang.At).Seconds(), exited.Seconds())
}
