package update

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func slot(v int64, product string) *Slot {
	return &Slot{Product: product, Version: v, Digest: digest.FromString(product + string(rune('0'+v))), Signed: "system/manifests/x.signed"}
}

func oneSlot() *State {
	return &State{Product: testPID, Default: SlotA, Slots: map[string]*Slot{SlotA: slot(2, testPID)}}
}

// Every refusal leaves the state as it was.
func TestStageRefusals(t *testing.T) {
	booting := oneSlot()
	if _, err := booting.Stage(slot(3, testPID), 2, testNow); err != nil {
		t.Fatal(err)
	}
	booting.Boot(testNow, "")
	for _, tc := range []struct {
		name     string
		s        *State
		sl       *Slot
		accepted int64
		want     string
	}{
		{"other product", oneSlot(), slot(3, otherPID), 2, "is for product " + otherPID},
		{"below accepted", oneSlot(), slot(3, testPID), 4, "lower than version 4 already accepted"},
		{"downgrade", oneSlot(), slot(1, testPID), 0, "not newer than version 2 in the default slot a"},
		{"same version", oneSlot(), &Slot{Product: testPID, Version: 2, Digest: digest.FromString("other bytes"), Signed: "x"}, 2, "not newer than version 2"},
		{"already default", oneSlot(), slot(2, testPID), 2, "already the default slot a"},
		{"during a trial boot", booting, slot(4, testPID), 2, "a trial boot of slot b (version 3) is running"},
	} {
		before := tc.s.clone()
		_, err := tc.s.Stage(tc.sl, tc.accepted, testNow)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want a refusal naming %q", tc.name, err, tc.want)
		}
		if tc.s.Default != before.Default || tc.s.Slots[SlotB] != before.Slots[SlotB] || (tc.s.Trial == nil) != (before.Trial == nil) {
			t.Errorf("%s: state changed: %+v", tc.name, tc.s)
		}
	}
}

// Stage arms a one-shot trial; the initrd takes the try; a boot that
// never confirms falls back on the next boot and says why; a confirmed
// trial becomes the default.
func TestTrialLifecycle(t *testing.T) {
	s := oneSlot()
	target, err := s.Stage(slot(3, testPID), 2, testNow)
	if err != nil || target != SlotB || s.Trial == nil || s.Trial.TriesLeft != 1 || s.Trial.Booting {
		t.Fatalf("stage: %v %s %+v", err, target, s.Trial)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	got, trial, changed := s.Boot(testNow, "")
	if got != SlotB || !trial || !changed || s.Trial.TriesLeft != 0 || !s.Trial.Booting {
		t.Fatalf("first boot: %s trial=%v changed=%v %+v", got, trial, changed, s.Trial)
	}
	// that boot hung or lost power: the next one falls back
	got, trial, changed = s.Boot(testNow, "")
	if got != SlotA || trial || !changed || s.Trial != nil || s.Default != SlotA {
		t.Fatalf("second boot: %s trial=%v changed=%v %+v", got, trial, changed, s)
	}
	if s.Last == nil || s.Last.Outcome != OutcomeFailed || s.Last.Version != 3 || !strings.Contains(s.Last.Why, "never confirmed") {
		t.Fatalf("last result %+v", s.Last)
	}
	// a third boot changes nothing
	if got, trial, changed = s.Boot(testNow, ""); got != SlotA || trial || changed {
		t.Fatalf("third boot: %s %v %v", got, trial, changed)
	}
	// confirm only the running trial
	if err := s.Confirm(SlotB, testNow); err == nil {
		t.Fatal("confirmed without a trial")
	}
	if _, err := s.Stage(slot(4, testPID), 2, testNow); err != nil {
		t.Fatal(err)
	}
	if err := s.Confirm(SlotB, testNow); err == nil {
		t.Fatal("confirmed a trial that has not booted")
	}
	s.Boot(testNow, "")
	if err := s.Confirm(SlotA, testNow); err == nil {
		t.Fatal("confirmed from the other slot")
	}
	if err := s.Confirm(SlotB, testNow); err != nil {
		t.Fatal(err)
	}
	if s.Default != SlotB || s.Trial != nil || s.Last.Outcome != OutcomeGood || s.Last.Version != 4 {
		t.Fatalf("after confirm %+v %+v", s, s.Last)
	}
	// the host's health check fails a trial
	if _, err := s.Stage(slot(5, testPID), 4, testNow); err != nil {
		t.Fatal(err)
	}
	if s.Trial.Slot != SlotA {
		t.Fatalf("staged into %s, want the inactive a", s.Trial.Slot)
	}
	s.Boot(testNow, "")
	if err := s.Fail("service web is backoff", testNow); err != nil {
		t.Fatal(err)
	}
	if s.Default != SlotB || s.Trial != nil || s.Last.Why != "service web is backoff" {
		t.Fatalf("after fail %+v", s)
	}
	if got, _, _ := s.Boot(testNow, ""); got != SlotB {
		t.Fatalf("boot after a failed trial: %s", got)
	}
}

func TestRollback(t *testing.T) {
	// an armed trial is disarmed
	s := oneSlot()
	s.Stage(slot(3, testPID), 2, testNow)
	next, err := s.Rollback(2, testNow)
	if err != nil || next != SlotA || s.Trial != nil || s.Last.Outcome != OutcomeCancelled {
		t.Fatalf("armed: %v %s %+v", err, next, s.Last)
	}
	// a running trial ends as failed
	s.Stage(slot(3, testPID), 2, testNow)
	s.Boot(testNow, "")
	if next, err = s.Rollback(2, testNow); err != nil || next != SlotA || s.Last.Outcome != OutcomeFailed {
		t.Fatalf("running: %v %s %+v", err, next, s.Last)
	}
	// no trial: the other slot is older than the accepted version
	s.Stage(slot(3, testPID), 2, testNow)
	s.Boot(testNow, "")
	s.Confirm(SlotB, testNow)
	_, err = s.Rollback(3, testNow)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "lower than version 3 already accepted") || s.Default != SlotB {
		t.Fatalf("older slot: %v, default %s", err, s.Default)
	}
	// before the new version was recorded, going back is allowed
	if next, err = s.Rollback(2, testNow); err != nil || next != SlotA || s.Default != SlotA {
		t.Fatalf("not yet recorded: %v %s", err, next)
	}
	// nothing in the other slot
	if _, err := oneSlot().Rollback(0, testNow); !errors.Is(err, ErrRefused) {
		t.Fatalf("empty other slot: %v", err)
	}
}

func TestCheckRejectsDamage(t *testing.T) {
	for name, s := range map[string]*State{
		"no default":        {Product: testPID, Default: "c", Slots: map[string]*Slot{SlotA: slot(1, testPID)}},
		"empty default":     {Product: testPID, Default: SlotB, Slots: map[string]*Slot{SlotA: slot(1, testPID)}},
		"other product":     {Product: testPID, Default: SlotA, Slots: map[string]*Slot{SlotA: slot(1, otherPID)}},
		"trial is default":  {Product: testPID, Default: SlotA, Slots: map[string]*Slot{SlotA: slot(1, testPID)}, Trial: &Trial{Slot: SlotA}},
		"negative tries":    {Product: testPID, Default: SlotA, Slots: map[string]*Slot{SlotA: slot(1, testPID), SlotB: slot(2, testPID)}, Trial: &Trial{Slot: SlotB, TriesLeft: -1}},
		"unknown slot name": {Product: testPID, Default: SlotA, Slots: map[string]*Slot{SlotA: slot(1, testPID), "z": slot(2, testPID)}},
	} {
		if err := s.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
