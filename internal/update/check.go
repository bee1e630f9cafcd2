package update

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/supervise"
	"github.com/vesselos/vessel/internal/trust"
)

// DefaultHealthWindow is how long a trial's services must stay healthy
// when the manifest does not say (healthSeconds).
const DefaultHealthWindow = 30 * time.Second

// CheckOptions configure the health check of a trial boot.
type CheckOptions struct {
	// Trust holds the CAs and product ID the initrd used (handed over on
	// /run); the booted manifest is verified again before its version is
	// recorded.
	Trust trust.Options
	// SuperviseDir is the state directory of the running vessel up.
	SuperviseDir string
	// Booted is the slot this boot runs (the initrd's boot record).
	Booted string
	// Window overrides the manifest's healthSeconds (0: the manifest's,
	// or DefaultHealthWindow).
	Window time.Duration
	// StartTimeout bounds the wait for every service to be running
	// (default 2 minutes).
	StartTimeout time.Duration
	// Interval between checks (default 1 s).
	Interval time.Duration
	// Run runs a health command (default: exec with a 10 s timeout).
	Run func(ctx context.Context, argv []string) error
	// Log gets progress lines (nil: none).
	Log func(format string, args ...any)
	// Counter, when set, is the TPM's anti-rollback counter: a confirmed
	// trial advances it to the new version (after the file record).
	Counter VersionCounter
	// Firmware, when set, gets a confirmed slot's UKI to the front of
	// the firmware's BootOrder.
	Firmware *Firmware
}

// VersionCounter is a monotonic anti-rollback record of the accepted
// manifest version (*tpm.TPM: an NV counter).
type VersionCounter interface {
	AdvanceVersion(v uint64) (uint64, error)
}

// CheckResult says what the check found and did.
type CheckResult struct {
	Trial   bool   `json:"trial"` // this boot was a trial
	Slot    string `json:"slot"`
	Version int64  `json:"version"`
	Outcome string `json:"outcome,omitempty"` // good or failed
	Why     string `json:"why,omitempty"`
	// Window is how long the services were watched.
	Window string `json:"window,omitempty"`
}

// ErrUnhealthy is returned when a trial boot failed its health check: the
// trial is recorded as failed and the next boot runs the default slot.
var ErrUnhealthy = errors.New("trial boot failed its health check")

// Check is the health check of a trial boot, run in the host after the
// services were started: every service of the manifest must be running,
// without a restart, and each health command must succeed, throughout the
// health window. Then the trial slot becomes the default, the
// anti-rollback version advances (trust.Versions.Record: the file on the
// data partition, and behind that seam the TPM NV counter) and
// system/current.json names it. On failure the trial is recorded as failed
// with the reason and ErrUnhealthy is returned: the caller reboots, and the
// initrd boots the default slot. On a boot that is not a trial there is
// nothing to do.
func Check(ctx context.Context, st *store.Store, opts CheckOptions) (*CheckResult, error) {
	root := st.Root()
	logf := opts.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	state, _, err := Read(root)
	if err != nil {
		return nil, err
	}
	res := &CheckResult{Slot: opts.Booted}
	if state.Trial == nil || !state.Trial.Booting || state.Trial.Slot != opts.Booted {
		if sl := state.Slots[opts.Booted]; sl != nil {
			res.Version = sl.Version
		}
		return res, nil
	}
	sl := state.Slots[opts.Booted]
	res.Trial, res.Version = true, sl.Version
	signed, err := bounded.ReadFile(filepath.Join(root, sl.Signed), trust.MaxSignedSize)
	if err != nil {
		return nil, err
	}
	topts := opts.Trust
	topts.Versions, topts.Record, topts.Images = trust.OpenVersions(root), false, st
	vm, verr := trust.Verify(signed, topts)
	why := ""
	if verr != nil {
		why = "verification: " + verr.Error()
	} else {
		window := opts.Window
		if window == 0 {
			window = time.Duration(vm.Manifest().HealthSeconds) * time.Second
		}
		if window == 0 {
			window = DefaultHealthWindow
		}
		res.Window = window.String()
		why = watch(ctx, vm, opts, window, logf)
	}
	if why != "" {
		res.Outcome, res.Why = OutcomeFailed, why
		if _, err := Modify(root, func(s *State) error { return s.Fail(why, now()) }); err != nil {
			return res, fmt.Errorf("%w: %s; recording it failed: %w", ErrUnhealthy, why, err)
		}
		return res, fmt.Errorf("%w: %s", ErrUnhealthy, why)
	}
	if err := Confirm(st, vm, opts.Booted, opts.Counter, opts.Firmware); err != nil {
		return res, err
	}
	res.Outcome, res.Why = OutcomeGood, "health check passed"
	return res, nil
}

// Confirm makes the booted trial slot the default (and its UKI the
// firmware's first boot entry), then records its
// version as accepted (the file on the data partition, then the TPM
// counter when there is one), then points system/current.json at it. The
// order keeps the invariant that the accepted version is never above the
// default slot's: a crash between the steps boots the new default, whose
// vessel up records the version again and whose initrd advances the TPM
// counter to it.
func Confirm(st *store.Store, vm *trust.VerifiedManifest, booted string, counter VersionCounter, fw *Firmware) error {
	root := st.Root()
	state, err := Modify(root, func(s *State) error { return s.Confirm(booted, now()) })
	if err != nil {
		return fmt.Errorf("confirm slot %s: %w", booted, err)
	}
	pause(FaultAfterCommit)
	if fw != nil {
		// After the record: if this write is lost, the initrd finds the
		// default slot booted by another UKI and repairs BootOrder.
		if err := fw.BootFirst(state.Slots[booted].UKI); err != nil {
			return fmt.Errorf("confirm slot %s: make its UKI the firmware's first boot entry: %w", booted, err)
		}
	}
	if err := trust.OpenVersions(root).Record(vm); err != nil {
		return fmt.Errorf("confirm slot %s: record version %d as accepted: %w", booted, vm.Version(), err)
	}
	if counter != nil {
		if _, err := counter.AdvanceVersion(uint64(vm.Version())); err != nil {
			return fmt.Errorf("confirm slot %s: advance the TPM's accepted version to %d: %w", booted, vm.Version(), err)
		}
	}
	sl := state.Slots[booted]
	cur := &registry.Current{Product: sl.Product, ProductName: vm.Manifest().ProductName, Version: sl.Version, Digest: sl.Digest,
		Signer: sl.Signer, Source: sl.Source, Images: sl.Images}
	signed, err := bounded.ReadFile(filepath.Join(root, sl.Signed), trust.MaxSignedSize)
	if err != nil {
		return fmt.Errorf("confirm slot %s: %w", booted, err)
	}
	if err := registry.RecordCurrent(root, cur, signed); err != nil {
		return fmt.Errorf("confirm slot %s: %w", booted, err)
	}
	return nil
}

// watch returns "" when every service stayed running and healthy for the
// window, else why not.
func watch(ctx context.Context, vm *trust.VerifiedManifest, opts CheckOptions, window time.Duration, logf func(string, ...any)) string {
	interval := opts.Interval
	if interval == 0 {
		interval = time.Second
	}
	startTimeout := opts.StartTimeout
	if startTimeout == 0 {
		startTimeout = 2 * time.Minute
	}
	run := opts.Run
	if run == nil {
		run = runHealth
	}
	m := vm.Manifest()
	want := map[string]bool{}
	for _, s := range m.Services {
		want[s.Name] = true
	}
	// Wait for every service to be running under a supervisor of this
	// manifest.
	deadline := time.Now().Add(startTimeout)
	var restarts map[string]int
	for {
		r, why, fatal := servicesState(opts.SuperviseDir, vm, want)
		if why == "" {
			restarts = r
			break
		}
		if fatal {
			return why
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("services not up after %v: %s", startTimeout, why)
		}
		select {
		case <-ctx.Done():
			return "interrupted: " + ctx.Err().Error()
		case <-time.After(interval):
		}
	}
	logf("every service running; watching them for %v", window)
	end := time.Now().Add(window)
	for {
		r, why, _ := servicesState(opts.SuperviseDir, vm, want)
		if why != "" {
			return why
		}
		for n, c := range r {
			if c != restarts[n] {
				return fmt.Sprintf("service %s restarted during the health window (%d restarts)", n, c-restarts[n])
			}
		}
		for _, s := range m.Services {
			if len(s.Health) == 0 {
				continue
			}
			if err := run(ctx, s.Health); err != nil {
				return fmt.Sprintf("service %s: health command %s: %v", s.Name, strings.Join(s.Health, " "), err)
			}
		}
		if !time.Now().Before(end) {
			return ""
		}
		select {
		case <-ctx.Done():
			return "interrupted: " + ctx.Err().Error()
		case <-time.After(interval):
		}
	}
}

// servicesState returns each wanted service's restart count, or why they
// are not all running under a supervisor of vm, and whether that is final
// (a service that failed, exited or restarted: no point waiting).
func servicesState(dir string, vm *trust.VerifiedManifest, want map[string]bool) (map[string]int, string, bool) {
	info, err := supervise.Running(dir)
	if err != nil {
		return nil, "supervisor: " + err.Error(), false
	}
	if info.Manifest != vm.Digest().String() {
		return nil, fmt.Sprintf("the supervisor runs manifest %s, not the trial's %s", info.Manifest, vm.Digest()), true
	}
	sts, err := supervise.Services(dir)
	if err != nil {
		return nil, err.Error(), false
	}
	out := map[string]int{}
	for _, s := range sts {
		if !want[s.Name] {
			continue
		}
		if s.State != supervise.StateRunning {
			why := fmt.Sprintf("service %s is %s", s.Name, s.State)
			if s.Error != "" {
				why += " (" + s.Error + ")"
			} else if s.ExitCode != nil {
				why += fmt.Sprintf(" (exit code %d)", *s.ExitCode)
			}
			fatal := s.State == supervise.StateFailed || s.State == supervise.StateExited || s.State == supervise.StateBackoff || s.Restarts > 0
			return nil, why, fatal
		}
		out[s.Name] = s.Restarts
	}
	for n := range want {
		if _, ok := out[n]; !ok {
			return nil, "service " + n + " has no status yet", false
		}
	}
	return out, "", false
}

func runHealth(ctx context.Context, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 200 {
			msg = msg[len(msg)-200:]
		}
		if msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}
