package mount

import (
	"errors"
	"os"
	"testing"
)

func TestMovedRewritesTheTarget(t *testing.T) {
	m := &Manager{Run: t.TempDir()}
	p, err := NewPlan(m.Run, "host", fakeImage(1), "/sysroot", ModeVerity, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(mountsDir(m.Run), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.writeRecord(record{Plan: p}); err != nil {
		t.Fatal(err)
	}
	if err := m.Moved("host", "/"); err != nil {
		t.Fatal(err)
	}
	r, err := m.readRecord("host")
	if err != nil {
		t.Fatal(err)
	}
	if r.Plan.Target != "/" || len(r.Plan.Layers) != 1 {
		t.Fatalf("after Moved: target %q, %d layers; want / and the plan kept", r.Plan.Target, len(r.Plan.Layers))
	}
	if _, ok := m.findTarget("/sysroot"); ok {
		t.Error("the old target is still listed")
	}
	if err := m.Moved("nothing", "/"); !errors.Is(err, ErrNotMounted) {
		t.Errorf("Moved of an unknown mount: %v, want ErrNotMounted", err)
	}
	if err := m.Moved("host", "relative"); err == nil {
		t.Error("a relative target was accepted")
	}
}
