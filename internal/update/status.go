package update

import (
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/trust"
)

// SlotStatus is one slot as `vessel update status` shows it.
type SlotStatus struct {
	Name     string        `json:"name"`
	Default  bool          `json:"default"`
	Booted   bool          `json:"booted"`
	Trial    bool          `json:"trial"`
	Version  int64         `json:"version"`
	Digest   digest.Digest `json:"digest"`
	Signer   string        `json:"signer,omitempty"`
	Source   string        `json:"source,omitempty"`
	Images   int           `json:"images"`
	StagedAt time.Time     `json:"stagedAt,omitzero"`
	UKI      *UKI          `json:"uki,omitempty"` // its own kernel image (nil: the installed one)
}

// Status is the slot record with what this boot runs and the accepted
// version.
type Status struct {
	Product string `json:"product"`
	Default string `json:"default"`
	// Booted is the slot this boot runs ("" when not known: not on a
	// machine booted by vessel's initrd).
	Booted    string       `json:"booted,omitempty"`
	Slots     []SlotStatus `json:"slots"`
	Trial     *Trial       `json:"trial,omitempty"`
	Last      *Result      `json:"last,omitempty"`
	Accepted  int64        `json:"acceptedVersion"`
	Recorded  bool         `json:"recorded"` // system/slots.json exists (else: made from current.json)
	NextBoot  string       `json:"nextBoot"` // the slot the next boot runs
	NextTrial bool         `json:"nextBootIsTrial"`
}

// GetStatus reads the slot record of the store at root; booted is the slot
// this boot runs, if known.
func GetStatus(root, booted string) (*Status, error) {
	s, exists, err := Read(root)
	if err != nil {
		return nil, err
	}
	acc, err := Accepted(trust.OpenVersions(root), s.Product)
	if err != nil {
		return nil, err
	}
	out := &Status{Product: s.Product, Default: s.Default, Booted: booted, Trial: s.Trial, Last: s.Last, Accepted: acc, Recorded: exists}
	names := make([]string, 0, len(s.Slots))
	for n := range s.Slots {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sl := s.Slots[n]
		if sl == nil {
			continue
		}
		out.Slots = append(out.Slots, SlotStatus{Name: n, Default: n == s.Default, Booted: n == booted, Trial: s.Trial != nil && s.Trial.Slot == n,
			Version: sl.Version, Digest: sl.Digest, Signer: sl.Signer, Source: sl.Source, Images: len(sl.Images), StagedAt: sl.StagedAt, UKI: sl.UKI})
	}
	probe := s.clone()
	out.NextBoot, out.NextTrial, _ = probe.Boot(now(), assumeFirmware(probe))
	return out, nil
}

// RollbackResult says what Rollback did.
type RollbackResult struct {
	NextBoot string  `json:"nextBoot"`
	Version  int64   `json:"version"`
	Last     *Result `json:"last,omitempty"`
	// Reboot is true when the running system is not what the next boot
	// runs.
	Reboot bool `json:"reboot"`
}

// Rollback goes back to the other slot (State.Rollback) and records it;
// booted is the slot this boot runs, if known. With fw, the firmware
// follows: a pending BootNext of the trial is cleared and the default
// slot's UKI is the first boot entry.
func Rollback(root, booted string, fw *Firmware) (*RollbackResult, error) {
	var next, before string
	s, err := Modify(root, func(s *State) error {
		acc, err := Accepted(trust.OpenVersions(root), s.Product)
		if err != nil {
			return err
		}
		before = s.Default
		next, err = s.Rollback(acc, now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	if next != before {
		// current.json follows the default slot
		sl := s.Slots[next]
		signed, err := bounded.ReadFile(filepath.Join(root, sl.Signed), trust.MaxSignedSize)
		if err != nil {
			return nil, fmt.Errorf("rollback: %w", err)
		}
		cur := &registry.Current{Product: sl.Product, Version: sl.Version, Digest: sl.Digest, Signer: sl.Signer, Source: sl.Source, Images: sl.Images}
		if err := registry.RecordCurrent(root, cur, signed); err != nil {
			return nil, fmt.Errorf("rollback: %w", err)
		}
	}
	if fw != nil {
		if err := fw.armTrial(s); err != nil {
			return nil, fmt.Errorf("rollback: %w", err)
		}
		if err := fw.BootFirst(s.Slots[next].UKI); err != nil {
			return nil, fmt.Errorf("rollback: make slot %s's UKI the firmware's first boot entry: %w", next, err)
		}
	}
	return &RollbackResult{NextBoot: next, Version: s.Slots[next].Version, Last: s.Last, Reboot: booted != "" && booted != next}, nil
}

// assumeFirmware is the entry the next boot starts if the firmware does
// as told: the trial's UKI through BootNext, else the default's.
func assumeFirmware(s *State) string {
	if u := s.TrialUKI(); u != nil {
		return u.Entry
	}
	if u := s.Slots[s.Default].UKI; u != nil {
		return u.Entry
	}
	return ""
}
