package mount

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanEmpty(t *testing.T) {
	p, err := NewPlan("/run/vessel", "b1", Empty("scratch"), "/mnt", ModeUserspace, Options{Writable: true, Upper: "/tmp/up"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Layers) != 0 {
		t.Errorf("layers: %+v", p.Layers)
	}
	want := "lowerdir=/run/vessel/empty,upperdir=/tmp/up/upper,workdir=/tmp/up/work,nosuid,nodev"
	if got := strings.Join(p.Overlay.Options, ","); got != want {
		t.Errorf("overlay options %q, want %q", got, want)
	}
	if _, err := NewPlan("/run/vessel", "b1", Empty("scratch"), "/mnt", ModeUserspace, Options{}); err == nil || !strings.Contains(err.Error(), "no layers") {
		t.Errorf("read-only mount of no layers: %v, want a 'no layers' error", err)
	}
}

func TestMountEmpty(t *testing.T) {
	e := newEnv(t)
	target := filepath.Join(t.TempDir(), "root")
	upper := t.TempDir()
	if _, err := e.m.Mount(context.Background(), Empty("scratch"), "empty1", target, Self(), Options{Writable: true, Upper: upper}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(target); len(ents) != 0 {
		t.Errorf("the root of an empty image has %d entries", len(ents))
	}
	if err := os.WriteFile(filepath.Join(target, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unmount("empty1"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(upper, "upper", "hello")); got != "hi\n" {
		t.Errorf("write did not reach the kept upper dir: %q", got)
	}
	if ents, _ := os.ReadDir(emptyLower(e.run)); len(ents) != 0 {
		t.Errorf("the shared empty lower directory was written to")
	}
}
