// Package update is the A/B slot model of atomic system updates (issue
// 17): two manifest slots on the data partition, one the default, the
// other staged as a one-shot trial. The state is one small JSON file,
// <store root>/system/slots.json, replaced crash-safely (temp, fsync,
// rename, fsync the directory), so a power cut at any moment leaves either
// the old state or the new one.
//
// The state machine (pure functions on State, tested without disks):
//
//	Stage:   the inactive slot gets the new manifest; Trial{tries 1}
//	Boot:    initrd, trial armed with tries left: tries--, Booting, boot it
//	         initrd, trial armed with no tries left: the trial boot never
//	         confirmed (crash, hang, power cut): Last=failed, boot default
//	Confirm: host, health check passed: Default=trial slot, Last=good,
//	         then the anti-rollback version advances (trust.Versions)
//	Fail:    host, health check failed: Last=failed, Trial=nil, reboot
//	Rollback: disarm an armed trial, or end a running one
//
// The images are content-addressed in the store and shared by both slots;
// only the manifests need slots. Images no slot references lose their
// tags and the store's gc collects them.
package update

import (
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/registry"
)

// Slot names.
const (
	SlotA = "a"
	SlotB = "b"
)

// Outcomes recorded in Result.
const (
	OutcomeGood      = "good"      // the trial passed its health check and is the default
	OutcomeFailed    = "failed"    // the trial failed (health check, verification, or it never confirmed)
	OutcomeCancelled = "cancelled" // an armed trial was disarmed before it booted
)

// DefaultTries is how many boots a trial gets: one (a one-shot trial).
const DefaultTries = 1

// Slot is one installed system manifest.
type Slot struct {
	Product  string                    `json:"product"`
	Version  int64                     `json:"version"`
	Digest   digest.Digest             `json:"digest"` // of the system manifest bytes
	Signed   string                    `json:"signed"` // the signed manifest, relative to the store root
	Signer   string                    `json:"signer,omitempty"`
	Source   string                    `json:"source,omitempty"`
	Images   []registry.InstalledImage `json:"images"`
	StagedAt time.Time                 `json:"stagedAt"`
	// UKI is the signed kernel image that boots the slot (nil: whatever
	// the firmware boots by default, the installed UKI).
	UKI *UKI `json:"uki,omitempty"`
}

// Trial is a slot armed for a trial boot.
type Trial struct {
	Slot      string    `json:"slot"`
	TriesLeft int       `json:"triesLeft"`
	Booting   bool      `json:"booting"` // the initrd took a try and booted it; not yet confirmed
	ArmedAt   time.Time `json:"armedAt"`
}

// Result is what happened to the last trial.
type Result struct {
	Slot    string        `json:"slot"`
	Version int64         `json:"version"`
	Digest  digest.Digest `json:"digest"`
	Outcome string        `json:"outcome"`
	Why     string        `json:"why,omitempty"`
	At      time.Time     `json:"at"`
}

// State is the slot record (system/slots.json).
type State struct {
	Product string           `json:"product"`
	Default string           `json:"default"`
	Slots   map[string]*Slot `json:"slots"`
	Trial   *Trial           `json:"trial,omitempty"`
	Last    *Result          `json:"last,omitempty"`
}

// Other is the slot that is not name.
func Other(name string) string {
	if name == SlotA {
		return SlotB
	}
	return SlotA
}

// Check reports a state that cannot be acted on (a damaged record is
// never guessed at).
func (s *State) Check() error {
	if s.Default != SlotA && s.Default != SlotB {
		return fmt.Errorf("default slot %q is neither %q nor %q", s.Default, SlotA, SlotB)
	}
	if s.Slots[s.Default] == nil {
		return fmt.Errorf("default slot %q is empty", s.Default)
	}
	for n, sl := range s.Slots {
		if n != SlotA && n != SlotB {
			return fmt.Errorf("unknown slot %q", n)
		}
		if sl == nil {
			continue
		}
		if sl.Product != s.Product {
			return fmt.Errorf("slot %s is for product %s, the record for %s", n, sl.Product, s.Product)
		}
		if sl.Signed == "" || sl.Digest == "" {
			return fmt.Errorf("slot %s names no signed manifest", n)
		}
	}
	if t := s.Trial; t != nil {
		if t.Slot == s.Default || s.Slots[t.Slot] == nil {
			return fmt.Errorf("trial slot %q is the default or empty", t.Slot)
		}
		if t.TriesLeft < 0 {
			return fmt.Errorf("trial slot %q has %d tries left", t.Slot, t.TriesLeft)
		}
	}
	return nil
}

// ErrRefused is wrapped by every refusal to stage or roll back: the
// state is left as it was.
var ErrRefused = errors.New("refused")

// Stage puts sl into the inactive slot and arms a one-shot trial of it.
// accepted is the highest version the machine accepted (anti-rollback
// record). A manifest of another product, or with a version not above the
// default slot's (or below the accepted one) is refused. Staging over an
// armed trial replaces it; staging during a running trial boot is refused
// (confirm or roll back first).
func (s *State) Stage(sl *Slot, accepted int64, now time.Time) (string, error) {
	def := s.Slots[s.Default]
	if sl.Product != s.Product {
		return "", fmt.Errorf("%w: manifest is for product %s, this machine runs %s", ErrRefused, sl.Product, s.Product)
	}
	if sl.Version < accepted {
		return "", fmt.Errorf("%w: version %d is lower than version %d already accepted (rollback)", ErrRefused, sl.Version, accepted)
	}
	if sl.Digest == def.Digest {
		return "", fmt.Errorf("%w: version %d (%s) is already the default slot %s", ErrRefused, sl.Version, sl.Digest, s.Default)
	}
	if sl.Version <= def.Version {
		return "", fmt.Errorf("%w: version %d is not newer than version %d in the default slot %s (downgrade)", ErrRefused, sl.Version, def.Version, s.Default)
	}
	if s.Trial != nil && s.Trial.Booting {
		return "", fmt.Errorf("%w: a trial boot of slot %s (version %d) is running: let it confirm or roll it back first", ErrRefused, s.Trial.Slot, s.Slots[s.Trial.Slot].Version)
	}
	target := Other(s.Default)
	s.Slots[target] = sl
	s.Trial = &Trial{Slot: target, TriesLeft: DefaultTries, ArmedAt: now.UTC().Truncate(time.Second)}
	return target, nil
}

// Boot is the initrd's choice: the slot to boot, whether this boot is a
// trial, and whether the state changed (and must be written, durably,
// before the boot goes on). booted is the UEFI boot entry the firmware
// started (BootCurrent, "Boot0004"; "" when unknown): a trial with its own
// UKI runs only if that UKI is what booted. Otherwise the firmware's
// one-shot (BootNext) went to the trial's UKI and it never reached this
// initrd (a kernel that panicked or hung, a UKI the firmware refused), or
// the one-shot was never set: the trial failed.
func (s *State) Boot(now time.Time, booted string) (slot string, trial, changed bool) {
	t := s.Trial
	if t == nil {
		return s.Default, false, false
	}
	if u := s.TrialUKI(); u != nil && booted != u.Entry {
		what := "an unknown entry (no UEFI variables)"
		if booted != "" {
			what = booted
		}
		why := fmt.Sprintf("its UKI (%s, %s) never reached the initrd: the firmware booted %s (a kernel that panicked or hung, a UKI the firmware refused, or a one-shot BootNext that was never set)", u.Entry, u.File, what)
		if t.Booting {
			why = fmt.Sprintf("the trial boot never confirmed (crash, hang or power cut before its health check passed; the firmware then booted %s)", what)
		}
		s.fail(why, now)
		return s.Default, false, true
	}
	if t.TriesLeft > 0 {
		t.TriesLeft--
		t.Booting = true
		return t.Slot, true, true
	}
	// Every try was taken and none confirmed: a crash, hang or power cut
	// during the trial boot. Back to the default, saying why.
	s.fail("the trial boot never confirmed (crash, hang or power cut before its health check passed)", now)
	return s.Default, false, true
}

// Fail ends the trial as failed (the host's health check, or the initrd's
// verification of the trial manifest, said why).
func (s *State) Fail(why string, now time.Time) error {
	if s.Trial == nil {
		return errors.New("no trial is armed or running")
	}
	s.fail(why, now)
	return nil
}

func (s *State) fail(why string, now time.Time) {
	sl := s.Slots[s.Trial.Slot]
	s.Last = &Result{Slot: s.Trial.Slot, Version: sl.Version, Digest: sl.Digest, Outcome: OutcomeFailed, Why: why, At: now.UTC().Truncate(time.Second)}
	s.Trial = nil
}

// Confirm makes the running trial slot the default (its health check
// passed). booted is the slot this boot runs.
func (s *State) Confirm(booted string, now time.Time) error {
	if s.Trial == nil || !s.Trial.Booting {
		return errors.New("no trial boot is running")
	}
	if s.Trial.Slot != booted {
		return fmt.Errorf("this boot runs slot %s, the trial is slot %s", booted, s.Trial.Slot)
	}
	sl := s.Slots[booted]
	s.Default = booted
	s.Trial = nil
	s.Last = &Result{Slot: booted, Version: sl.Version, Digest: sl.Digest, Outcome: OutcomeGood, Why: "health check passed", At: now.UTC().Truncate(time.Second)}
	return nil
}

// Rollback goes back to the other slot: an armed trial is disarmed, a
// running trial boot ends as failed (the next boot runs the default).
// Without a trial, the other slot becomes the default only if its version
// is not below the accepted one (anti-rollback); an older slot is refused.
// It returns what the next boot runs.
func (s *State) Rollback(accepted int64, now time.Time) (string, error) {
	if t := s.Trial; t != nil {
		sl := s.Slots[t.Slot]
		outcome, why := OutcomeCancelled, "rolled back before its trial boot"
		if t.Booting {
			outcome, why = OutcomeFailed, "rolled back during its trial boot"
		}
		s.Last = &Result{Slot: t.Slot, Version: sl.Version, Digest: sl.Digest, Outcome: outcome, Why: why, At: now.UTC().Truncate(time.Second)}
		s.Trial = nil
		return s.Default, nil
	}
	other := s.Slots[Other(s.Default)]
	if other == nil {
		return "", fmt.Errorf("%w: slot %s is empty: there is nothing to go back to", ErrRefused, Other(s.Default))
	}
	if other.Version < accepted {
		return "", fmt.Errorf("%w: slot %s holds version %d, lower than version %d already accepted: the anti-rollback record would refuse to boot it; publish a new version instead", ErrRefused, Other(s.Default), other.Version, accepted)
	}
	s.Default = Other(s.Default)
	return s.Default, nil
}

// Referenced returns the store tags of every image a slot references.
func (s *State) Referenced() map[string]bool {
	out := map[string]bool{}
	for _, sl := range s.Slots {
		if sl == nil {
			continue
		}
		for _, im := range sl.Images {
			out[im.Tag] = true
		}
	}
	return out
}
