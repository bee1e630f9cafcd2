package ociruntime

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// A creation killed before runc wrote state.json leaves a directory that
// runc neither lists nor deletes: RemoveIncomplete removes it, and nothing
// that runc knows, a live vessel keeps, or a probe uses.
func TestRemoveIncomplete(t *testing.T) {
	root := t.TempDir()
	mk := func(id string, files ...string) {
		os.MkdirAll(filepath.Join(root, id), 0o700)
		for _, f := range files {
			os.WriteFile(filepath.Join(root, id, f), nil, 0o600)
		}
	}
	mk("svc-half", "exec.fifo")
	mk("svc-known", "exec.fifo", "state.json")
	mk("svc-live", "exec.fifo")
	mk(ProbePrefix+"1", "exec.fifo")
	r := Runtime{Name: "runc", StateRoot: root}
	got, err := r.RemoveIncomplete(func(id string) bool { return id == "svc-live" })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"svc-half"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("removed %v, want %v", got, want)
	}
	for id, want := range map[string]bool{"svc-half": false, "svc-known": true, "svc-live": true, ProbePrefix + "1": true} {
		if _, err := os.Stat(filepath.Join(root, id)); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", id, err == nil, want)
		}
	}
	if got, err := (Runtime{Name: "crun", StateRoot: root}).RemoveIncomplete(func(string) bool { return false }); err != nil || got != nil {
		t.Errorf("crun: removed %v, %v; want nothing (layout unknown)", got, err)
	}
}
