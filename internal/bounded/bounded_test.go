package bounded

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(small, 5); err != nil || string(b) != "hello" {
		t.Fatalf("at the limit: %q %v", b, err)
	}
	_, err := ReadFile(small, 4)
	if !errors.Is(err, ErrTooLarge) || err.Error() != small+" is larger than 4 bytes" {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "absent"), 4); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// /dev/zero and a sparse 1 TiB file are refused after at most limit+1
// bytes: the memory allocated stays near the limit, not the input's size.
func TestReadFileHugeInputs(t *testing.T) {
	huge := filepath.Join(t.TempDir(), "huge")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil { // sparse: no disk used
		f.Close()
		t.Skipf("this file system cannot hold a sparse 1 TiB file: %v", err)
	}
	f.Close()
	for _, p := range []string{"/dev/zero", huge} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := ReadFile(p, 1<<20)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "larger than 1048576 bytes") {
			t.Fatalf("%s: %v", p, err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
			t.Errorf("%s: %d bytes allocated to refuse it", p, got)
		}
	}
}
