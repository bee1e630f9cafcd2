package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesAndCleansUp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Write(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	st, _ := os.Stat(p)
	if string(b) != "two" || st.Mode().Perm() != 0o644 {
		t.Fatalf("content %q mode %v", b, st.Mode())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	// a failed write (target is a directory) leaves no temp file
	if err := Write(dir, []byte("x"), 0o644); err == nil {
		t.Fatal("replacing a directory succeeded")
	}
	if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) == 0 {
		t.Fatal("unexpected")
	}
	if err := WriteIn(filepath.Join(dir, "missing"), p, nil, 0o644); err == nil {
		t.Fatal("missing temp dir accepted")
	}
}

func TestWriteVolatile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	for _, v := range []string{"one", "two"} {
		if err := WriteVolatile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatalf("content %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	if err := WriteVolatile(filepath.Join(dir, "no", "such"), nil, 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
