package uki

import (
	"os"
	"testing"
)

// FuzzInspect: Inspect reads untrusted files; it must return an error, never
// panic or hang.
func FuzzInspect(f *testing.F) {
	if stub, err := os.ReadFile(DefaultStub); err == nil {
		if img, err := Build(Options{Stub: stub, Kernel: stub, Initrd: newc(map[string][]byte{InitrdProductIDPath: []byte("x")},
			[]string{InitrdProductIDPath}), Cmdline: "x", Uname: "1"}); err == nil {
			f.Add(img)
		}
	}
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Inspect(b)
		if err == nil && r.Valid() {
			t.Fatal("a fuzzed image has valid signatures")
		}
	})
}

func FuzzReadCpio(f *testing.F) {
	f.Add(newc(map[string][]byte{"a": []byte("hello"), "b/c": nil}, []string{"a", "b/c"}))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, _, _, _ := ReadCpio(b)
		for _, e := range entries {
			if len(e.Data) > len(b) {
				t.Fatal("entry larger than the archive")
			}
		}
	})
}
