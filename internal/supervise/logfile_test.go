package supervise

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// A log rotates before it passes its cap, keeps one older part, and the
// two parts together hold the newest lines in order.
func TestLogFileRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	l, err := openLog(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := 0; i < 500; i++ {
		line := fmt.Sprintf("line %04d\n", i)
		all.WriteString(line)
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) > 1000 || len(old) > 1000 {
		t.Fatalf("sizes %d and %d: want at most 1000 each", len(cur), len(old))
	}
	both := append(old, cur...)
	if !bytes.HasSuffix(all.Bytes(), both) {
		t.Fatalf("the two parts are not the newest output in order:\n%s", both)
	}
	if !bytes.HasSuffix(cur, []byte("line 0499\n")) {
		t.Fatalf("current part ends %q", cur[len(cur)-20:])
	}
	// Reopening appends to the current part and keeps its size in mind.
	l, err = openLog(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.size != int64(len(cur)) {
		t.Fatalf("reopened size %d, want %d", l.size, len(cur))
	}
}

// One write larger than the cap (a pipe's 32 KiB) is split, not let
// through whole.
func TestLogFileBigWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	l, err := openLog(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789"), 350)
	if n, err := l.Write(big); n != len(big) || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	l.Close()
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if len(cur) > 1000 || len(old) > 1000 || !bytes.HasSuffix(big, append(old, cur...)) {
		t.Fatalf("parts of %d and %d bytes", len(old), len(cur))
	}
}

// Two writers at once (stdout and stderr) lose nothing.
func TestLogFileConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	l, err := openLog(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				l.Write([]byte("0123456789\n"))
			}
		}()
	}
	wg.Wait()
	l.Close()
	b, _ := os.ReadFile(path)
	if len(b) != 2*1000*11 {
		t.Fatalf("%d bytes, want %d", len(b), 2*1000*11)
	}
}
