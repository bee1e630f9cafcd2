package layer

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Build reports the bytes the filesystem tool has written while it runs,
// and a last time with the whole filesystem image.
func TestBuildReportsWritten(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs is not installed (make deps)")
	}
	dir := t.TempDir()
	b := make([]byte, 4<<20) // random: does not compress
	rand.Read(b)
	if err := os.WriteFile(filepath.Join(dir, "data"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	old := ProgressInterval
	ProgressInterval = time.Millisecond
	defer func() { ProgressInterval = old }()
	var (
		mu     sync.Mutex
		seen   []int64
		hashed [][2]int64
	)
	built, err := Build(context.Background(), dir, filepath.Join(t.TempDir(), "blob"), BuildOptions{
		Written: func(n int64) { mu.Lock(); seen = append(seen, n); mu.Unlock() },
		Hashed:  func(done, total int64) { mu.Lock(); hashed = append(hashed, [2]int64{done, total}); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("Written was never called")
	}
	last := seen[len(seen)-1]
	if last < 4<<20 || last > built.DataSize {
		t.Fatalf("last report %d: want the filesystem image, at least the 4 MiB of data and at most %d", last, built.DataSize)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] < seen[i-1] {
			t.Fatalf("reports went backwards: %v", seen)
		}
	}
	// Then the hashing (digest and verity tree): both passes over the
	// image, counted up to twice its size, ending there.
	if len(hashed) < 2 {
		t.Fatalf("Hashed called %d times: %v", len(hashed), hashed)
	}
	for i, h := range hashed {
		if h[1] != 2*built.DataSize || h[0] > h[1] || (i > 0 && h[0] < hashed[i-1][0]) {
			t.Fatalf("hash reports %v: want rising counts of %d", hashed, 2*built.DataSize)
		}
	}
	if end := hashed[len(hashed)-1]; end[0] != end[1] {
		t.Fatalf("last hash report %v: want all of it", end)
	}
}
