package initrd

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Issue 17 in the host: the supervisor runs the slot the initrd booted
// (never recording a trial's version as accepted), and on a trial boot
// PID 1 starts the health check, `vessel update check`, and reboots into
// the default slot if it fails.

// supervisorArgsFor is SupervisorArgs for the booted slot: the signed
// manifest the initrd verified, and --no-record on a trial boot (the
// version advances only when the health check passes).
func supervisorArgsFor(rec *BootRecord, productID string) []string {
	args := SupervisorArgs(productID)
	if rec == nil || rec.Signed == "" {
		return args
	}
	args = append(args, filepath.Join(HostDataDir, rec.Signed))
	if rec.Trial {
		args = append(args, "--no-record")
	}
	return args
}

// TrialCheckArgs is the health check of a trial boot.
func TrialCheckArgs(productID, slot string) []string {
	return []string{"vessel", "--root", HostDataDir, "update", "check", "--ca", HostCAFile, "--product-id", productID, "--slot", slot}
}

// startTrialCheck starts the health check as a child of PID 1 (which
// reaps it and reads its exit status).
func startTrialCheck(exe string, rec *BootRecord, productID string) (*os.Process, []string, error) {
	args := TrialCheckArgs(productID, rec.Slot)
	p, err := os.StartProcess(exe, args, &os.ProcAttr{
		Env:   []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=linux"},
		Files: []*os.File{nil, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	return p, args, err
}

// hostBootRecord is what the initrd verified (nil if unreadable).
func hostBootRecord() *BootRecord {
	r, err := ReadBootRecord(BootRecordFile)
	if err != nil {
		return nil
	}
	return r
}

func argsString(a []string) string { return strings.Join(a, " ") }

// Test hook (vessel.test=update, inside the signed UKI like every
// vessel.test flag): once the services are up (and, on a trial boot, the
// health check confirmed the slot), PID 1 runs `vessel update` on the
// signed manifest the test placed on the data partition, with the images
// from the store beside it, and reboots if it staged. The VM tests use it
// to stage on the machine itself, so that a power cut can hit staging.
const (
	UpdateIncomingDir = HostDataDir + "/incoming"
	UpdateIncoming    = UpdateIncomingDir + "/update.signed"
	UpdateIncomingUKI = UpdateIncomingDir + "/kernel.efi" // staged with it when present
)

// TestUpdateArgs is the command of the vessel.test=update hook.
func TestUpdateArgs() []string {
	args := []string{"vessel", "--root", HostDataDir, "update", UpdateIncoming, "--from", UpdateIncomingDir + "/store"}
	if _, err := os.Stat(UpdateIncomingUKI); err == nil {
		args = append(args, "--uki", UpdateIncomingUKI)
	}
	return args
}

// startTestUpdate starts the hook if a manifest is waiting (nil if not).
func startTestUpdate(exe string) (*os.Process, error) {
	if _, err := os.Stat(UpdateIncoming); err != nil {
		return nil, nil
	}
	return os.StartProcess(exe, TestUpdateArgs(), &os.ProcAttr{
		Env:   []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=linux"},
		Files: []*os.File{nil, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
}
