package initrd

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/boot/efivar"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/update"
)

// Chosen is the manifest the initrd boots, from the update slots (issue
// 17).
type Chosen struct {
	VM     *trust.VerifiedManifest
	Store  *store.Store
	Slot   string // "a" or "b"
	Trial  bool   // a trial boot: a failure reboots, and the host runs the health check
	Signed string // the signed manifest, relative to the data partition
	// Notes are lines for the console: what was chosen and why.
	Notes []string
	// BootFirst is the UEFI boot entry to put first in BootOrder: the
	// default slot's UKI, when another one booted the default slot (a
	// confirm whose BootOrder write was lost).
	BootFirst string
}

// ChooseBoot picks and verifies the manifest to boot from the data
// partition mounted at dir. With a slot record (system/slots.json) it runs
// the state machine of package update: an armed trial with a try left has
// the try taken, durably (rw(true) makes dir writable, rw(false) read-only
// again), before it is booted, so a crash, hang or power cut falls back on
// the next boot; a trial whose tries are gone, or whose manifest fails
// verification here, is recorded as failed and the default slot boots.
// Without a record (or with a damaged one) system/current.json is booted,
// as before issue 17, as slot a. booted is the UEFI boot entry the
// firmware started (BootCurrent; "" unknown): a trial with its own UKI
// runs only when that UKI booted (update.State.Boot).
func ChooseBoot(dir string, cas []*x509.Certificate, productID string, at time.Time, booted string, rw func(bool) error) (*Chosen, error) {
	c := &Chosen{Slot: update.SlotA}
	state, exists, err := update.Read(dir)
	if err == nil && !exists {
		return c.current(dir, cas, productID, at)
	}
	if err != nil {
		if _, serr := os.Stat(update.StatePath(dir)); serr != nil {
			return nil, fmt.Errorf("installed system: %w", err)
		}
		c.Notes = append(c.Notes, fmt.Sprintf("slot record unusable (%v): booting system/current.json", err))
		return c.current(dir, cas, productID, at)
	}
	now := at
	if now.IsZero() {
		now = time.Now()
	}
	write := func() error {
		if err := rw(true); err != nil {
			return fmt.Errorf("make the data partition writable: %w", err)
		}
		werr := update.Write(dir, state)
		if err := rw(false); err != nil && werr == nil {
			werr = fmt.Errorf("make the data partition read-only again: %w", err)
		}
		return werr
	}
	failedTrial := state.Trial
	slot, trial, changed := state.Boot(now, booted)
	if changed {
		if err := write(); err != nil {
			if !trial {
				return nil, fmt.Errorf("record the failed trial: %w", err)
			}
			// The try could not be taken durably: booting the trial now
			// could repeat forever. Boot the default; the trial stays armed.
			c.Notes = append(c.Notes, fmt.Sprintf("slot %s: cannot take the trial's try (%v): booting the default slot %s", slot, err, state.Default))
			slot, trial = state.Default, false
		}
	}
	if trial {
		sl := state.Slots[slot]
		c.Notes = append(c.Notes, fmt.Sprintf("slot %s: trial boot of version %d (try taken, %d left; default slot %s version %d)", slot, sl.Version, state.Trial.TriesLeft, state.Default, state.Slots[state.Default].Version))
	} else if changed && failedTrial != nil && state.Last != nil {
		c.Notes = append(c.Notes, fmt.Sprintf("slot %s version %d failed: %s; booting the default slot %s", state.Last.Slot, state.Last.Version, state.Last.Why, slot))
	}
	sl := state.Slots[slot]
	vm, st, err := VerifySlot(dir, sl.Signed, sl.Digest, cas, productID, at)
	if err != nil && trial {
		why := "the initrd refused it: " + err.Error()
		if ferr := state.Fail(why, now); ferr == nil {
			if werr := write(); werr != nil {
				c.Notes = append(c.Notes, fmt.Sprintf("recording the failed trial: %v", werr))
			}
		}
		c.Notes = append(c.Notes, fmt.Sprintf("slot %s version %d failed: %s; booting the default slot %s", slot, sl.Version, why, state.Default))
		slot, trial = state.Default, false
		sl = state.Slots[slot]
		vm, st, err = VerifySlot(dir, sl.Signed, sl.Digest, cas, productID, at)
	}
	if err != nil {
		return nil, fmt.Errorf("slot %s: %w", slot, err)
	}
	c.VM, c.Store, c.Slot, c.Trial, c.Signed = vm, st, slot, trial, sl.Signed
	if u := sl.UKI; !trial && u != nil && booted != "" && booted != u.Entry {
		c.BootFirst = u.Entry
		c.Notes = append(c.Notes, fmt.Sprintf("slot %s is the default but the firmware booted %s, not its UKI %s (%s): making %s the first boot entry", slot, booted, u.Entry, u.File, u.Entry))
	}
	return c, nil
}

// current boots system/current.json (VerifyData).
func (c *Chosen) current(dir string, cas []*x509.Certificate, productID string, at time.Time) (*Chosen, error) {
	vm, st, err := VerifyData(dir, cas, productID, at)
	if err != nil {
		return nil, err
	}
	c.VM, c.Store = vm, st
	c.Signed = filepath.Join("system", "manifests", vm.Digest().Encoded()+".signed")
	return c, nil
}

// VerifySlot verifies the signed manifest at rel (relative to the data
// partition at dir) as VerifyData does: the initrd's CAs and product ID,
// every image in the partition's store, no version below the accepted one,
// and its digest must be want.
func VerifySlot(dir, rel string, want digest.Digest, cas []*x509.Certificate, productID string, at time.Time) (*trust.VerifiedManifest, *store.Store, error) {
	if !filepath.IsLocal(rel) {
		return nil, nil, fmt.Errorf("signed manifest %q is outside the data partition", rel)
	}
	signed, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		return nil, nil, fmt.Errorf("signed manifest: %w", err)
	}
	st, err := store.OpenLayout(filepath.Join(dir, "oci"))
	if err != nil {
		return nil, nil, fmt.Errorf("image store: %w", err)
	}
	vm, err := trust.Verify(signed, trust.Options{CAs: cas, ProductID: productID, At: at, Versions: trust.OpenVersions(dir), Images: st})
	if err != nil {
		return nil, nil, fmt.Errorf("system manifest %s: %w", rel, err)
	}
	if vm.Digest() != want {
		return nil, nil, fmt.Errorf("system manifest %s is %s, but the slot record names %s", rel, vm.Digest(), want)
	}
	if vm.Manifest().Hostfs == nil {
		return nil, nil, fmt.Errorf("system manifest %s (product %s version %d) names no host image (hostfs in system.yaml): nothing to boot", vm.Digest(), vm.ProductID(), vm.Version())
	}
	return vm, st, nil
}

// chooseBoot is ChooseBoot on the stage's data partition (mounted
// read-only at DataMount; remounted read-write only to write the record).
func (s *Stage) chooseBoot(cas []*x509.Certificate, productID string) (*Chosen, error) {
	var vars *efivar.Store
	booted := ""
	if fs, ok := s.sys.(firmwareSystem); ok {
		vars, booted = fs.firmware(s.printf)
	}
	c, err := ChooseBoot(s.path(DataMount), cas, productID, time.Time{}, booted, s.dataWritable)
	if c != nil {
		for _, n := range c.Notes {
			s.printf("%s", n)
		}
		s.trial = c.Trial
		if c.BootFirst != "" && vars != nil {
			n, perr := efivar.ParseEntryName(c.BootFirst)
			if perr == nil {
				perr = vars.BootFirst(n)
			}
			if perr != nil {
				s.printf("setting BootOrder: %v", perr)
			}
		}
	}
	return c, err
}

// firmwareSystem is a system with UEFI variables (the real one): the boot
// entry the firmware started, for UKI slots.
type firmwareSystem interface {
	firmware(printf func(string, ...any)) (*efivar.Store, string)
}

// errNoReboot: the system cannot reboot (tests).
var errNoReboot = errors.New("this system cannot reboot")

// rebooter is a system that can reboot (the real one).
type rebooter interface{ reboot() error }

// failTrial reboots after a failure during a trial boot: the try was
// taken, so the next boot runs the default slot. It returns only if the
// reboot fails.
func (s *Stage) failTrial() {
	r, ok := s.sys.(rebooter)
	if !ok {
		s.printf("FAILED: reboot: %v", errNoReboot)
		return
	}
	s.printf("rebooting: the trial boot failed, the next boot runs the default slot")
	if err := r.reboot(); err != nil {
		s.printf("FAILED: reboot: %v", err)
	}
}
