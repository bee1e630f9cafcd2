package update

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/trust"
)

// slotsBytes is the slot record as it is on disk (nil: none).
func slotsBytes(t *testing.T, root string) []byte {
	t.Helper()
	b, err := os.ReadFile(StatePath(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func accepted(t *testing.T, root string) int64 {
	t.Helper()
	v, err := Accepted(trust.OpenVersions(root), testPID)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// bootAndConfirm plays the initrd (take the try) and a passing health
// check (Confirm) on the machine store.
func bootAndConfirm(t *testing.T, f *fixture, signed []byte) {
	t.Helper()
	root := f.machine.Root()
	var booted string
	if _, err := Modify(root, func(s *State) error { booted, _, _ = s.Boot(testNow, ""); return nil }); err != nil {
		t.Fatal(err)
	}
	vm, err := trust.Verify(signed, trust.Options{CAs: f.p.CAs, ProductID: testPID, Images: f.machine})
	if err != nil {
		t.Fatal(err)
	}
	if err := Confirm(f.machine, vm, booted, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// v1 -> v2 stages only the missing image, arms a one-shot trial of slot b
// and leaves the default, current.json and the accepted version alone;
// refusals (another product, a failing image, a downgrade) leave the slot
// record byte for byte; unreferenced images are collected.
func TestStage(t *testing.T) {
	f := newFixture(t)
	root := f.machine.Root()
	ctx := context.Background()

	// another product under the same CA
	if _, err := Stage(ctx, f.machine, f.p.sign(t, "other", 2, f.host, f.web[2]), f.fromHere); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "product") {
		t.Fatalf("other product: %v", err)
	}
	if slotsBytes(t, root) != nil {
		t.Fatal("a refused update wrote the slot record")
	}
	// no source for a missing image
	if _, err := Stage(ctx, f.machine, f.signed[2], StageOptions{Trust: f.p.opts()}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not in the store") {
		t.Fatalf("no source: %v", err)
	}

	res, err := Stage(ctx, f.machine, f.signed[2], f.fromHere)
	if err != nil {
		t.Fatal(err)
	}
	if res.Slot != SlotB || res.Version != 2 || res.TriesLeft != 1 || len(res.Images) != 2 {
		t.Fatalf("staged %+v", res)
	}
	for _, im := range res.Images {
		if im.Pulled != (im.Name == "web") {
			t.Errorf("image %s pulled=%v: only the changed web image should be fetched", im.Name, im.Pulled)
		}
	}
	if res.Fetched <= 0 || res.Fetched >= res.Total {
		t.Fatalf("fetched %d of %d bytes", res.Fetched, res.Total)
	}
	s := readState(t, root)
	if s.Default != SlotA || s.Trial == nil || s.Trial.Slot != SlotB || s.Slots[SlotB].Version != 2 || s.Slots[SlotA].Version != 1 {
		t.Fatalf("state %+v", s)
	}
	if cur, _ := registry.ReadCurrent(root); cur.Version != 1 {
		t.Fatalf("current.json moved to %d before the trial", cur.Version)
	}
	if accepted(t, root) != 1 {
		t.Fatal("the accepted version moved before the trial")
	}
	if _, err := image.Verify(f.machine, "system/web:v2", nil); err != nil {
		t.Fatal(err)
	}

	// a failing image: web 3 in the store with a flipped byte in its layer
	if _, err := f.client.Copy(ctx, registry.Store(f.build, f.web[3].Digest.String()), registry.Store(f.machine, "")); err != nil {
		t.Fatal(err)
	}
	m3, _ := f.machine.Manifest(f.web[3].Digest)
	p, _ := f.machine.BlobPath(m3.Layers[0].Digest)
	b, _ := os.ReadFile(p)
	b[100] ^= 1
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	before := slotsBytes(t, root)
	if _, err := Stage(ctx, f.machine, f.signed[3], f.fromHere); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "image web") {
		t.Fatalf("failing image: %v", err)
	}
	if !bytes.Equal(before, slotsBytes(t, root)) {
		t.Fatal("a refused update changed the slot record")
	}
	b[100] ^= 1
	os.WriteFile(p, b, 0o644)

	// v2 boots and passes: default b, accepted 2, current.json 2
	bootAndConfirm(t, f, f.signed[2])
	s = readState(t, root)
	if s.Default != SlotB || s.Trial != nil || s.Last.Outcome != OutcomeGood || accepted(t, root) != 2 {
		t.Fatalf("after confirm: %+v accepted %d", s, accepted(t, root))
	}
	if cur, _ := registry.ReadCurrent(root); cur.Version != 2 {
		t.Fatalf("current.json says %d", cur.Version)
	}
	// a downgrade to 1 is refused
	before = slotsBytes(t, root)
	if _, err := Stage(ctx, f.machine, f.signed[1], f.fromHere); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "lower than version 2 already accepted") {
		t.Fatalf("downgrade: %v", err)
	}
	if !bytes.Equal(before, slotsBytes(t, root)) {
		t.Fatal("a refused downgrade changed the slot record")
	}
	// v3 replaces v1 in slot a: web 1 is referenced by no slot any more
	res, err = Stage(ctx, f.machine, f.signed[3], f.fromHere)
	if err != nil {
		t.Fatal(err)
	}
	if res.Slot != SlotA || !contains(res.Untagged, "system/web:v1") || contains(res.Untagged, "system/hostfs:v1") && f.machine.HasBlob(f.host.Digest) == false {
		t.Fatalf("staged %+v", res)
	}
	if f.machine.HasBlob(f.web[1].Digest) {
		t.Fatal("web 1, referenced by no slot, was not collected")
	}
	for _, d := range []string{f.host.Digest.String(), f.web[2].Digest.String(), f.web[3].Digest.String()} {
		if _, err := image.Verify(f.machine, d, nil); err != nil {
			t.Fatalf("an image a slot references was damaged by gc: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, readState(t, root).Slots[SlotA].Signed)); err != nil {
		t.Fatal(err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// Rollback on disk: an armed trial is disarmed; with no trial and the
// other slot older than the accepted version, it is refused and nothing
// changes.
func TestRollbackOnDisk(t *testing.T) {
	f := newFixture(t)
	root := f.machine.Root()
	if _, err := Stage(context.Background(), f.machine, f.signed[2], f.fromHere); err != nil {
		t.Fatal(err)
	}
	r, err := Rollback(root, SlotA, nil)
	if err != nil || r.NextBoot != SlotA || r.Reboot || r.Last.Outcome != OutcomeCancelled {
		t.Fatalf("disarm: %+v %v", r, err)
	}
	if s := readState(t, root); s.Trial != nil {
		t.Fatal("the trial is still armed")
	}
	if _, err := Stage(context.Background(), f.machine, f.signed[2], f.fromHere); err != nil {
		t.Fatal(err)
	}
	bootAndConfirm(t, f, f.signed[2])
	before := slotsBytes(t, root)
	if _, err := Rollback(root, SlotB, nil); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "lower than version 2 already accepted") {
		t.Fatalf("rollback to an older slot: %v", err)
	}
	if !bytes.Equal(before, slotsBytes(t, root)) {
		t.Fatal("a refused rollback changed the slot record")
	}
	if cur, _ := registry.ReadCurrent(root); cur.Version != 2 {
		t.Fatalf("current.json: %d", cur.Version)
	}
}

// Rollback to a slot the accepted version allows (a confirm cut before
// the version was recorded) makes it the default and current.json follows.
func TestRollbackSwitchesDefault(t *testing.T) {
	f := newFixture(t)
	root := f.machine.Root()
	if _, err := Stage(context.Background(), f.machine, f.signed[2], f.fromHere); err != nil {
		t.Fatal(err)
	}
	if _, err := Modify(root, func(s *State) error { s.Boot(testNow, ""); return s.Confirm(SlotB, testNow) }); err != nil {
		t.Fatal(err)
	}
	r, err := Rollback(root, SlotB, nil)
	if err != nil || r.NextBoot != SlotA || r.Version != 1 || !r.Reboot {
		t.Fatalf("%+v %v", r, err)
	}
	if s := readState(t, root); s.Default != SlotA {
		t.Fatalf("default %s", s.Default)
	}
	cur, err := registry.ReadCurrent(root)
	if err != nil || cur.Version != 1 {
		t.Fatalf("current.json %+v %v", cur, err)
	}
	if _, err := trust.Verify(mustRead(t, filepath.Join(root, cur.Signed)), trust.Options{CAs: f.p.CAs}); err != nil {
		t.Fatalf("current.json names a file that does not verify: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
