package supervise

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// readAll returns what ReadLog gives for service name in dir.
func readAll(t *testing.T, dir, name string, opts LogOptions) []LogEntry {
	t.Helper()
	var es []LogEntry
	if err := ReadLog(context.Background(), dir, name, opts, func(e LogEntry) error {
		es = append(es, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return es
}

func lines(es []LogEntry) string {
	var b strings.Builder
	for _, e := range es {
		b.WriteString(e.Line + "\n")
	}
	return b.String()
}

// testLog opens service web's log in a fresh supervise directory.
func testLog(t *testing.T, max int64) (dir string, l *logFile) {
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Dir(LogFile(dir, "web")), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := openLog(LogFile(dir, "web"), max)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return dir, l
}

// A log rotates before it passes its cap, keeps one older part, and the
// two parts together hold the newest lines in order, each whole.
func TestLogFileRotates(t *testing.T) {
	dir, l := testLog(t, 1000)
	path := LogFile(dir, "web")
	var all bytes.Buffer
	for i := 0; i < 500; i++ {
		line := fmt.Sprintf("line %04d\n", i)
		all.WriteString(line)
		if _, err := l.stream(StreamStdout).Write([]byte(line)); err != nil {
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
	got := lines(readAll(t, dir, "web", LogOptions{Tail: -1}))
	if !strings.HasSuffix(all.String(), got) || !strings.HasPrefix(got, "line 0") {
		t.Fatalf("the two parts are not the newest output in order:\n%s", got)
	}
	if !strings.HasSuffix(got, "line 0499\n") {
		t.Fatalf("log ends %q", got[len(got)-20:])
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

// One write larger than the cap (a pipe's 32 KiB) is split into records
// that each fit, and read back as the one line it was.
func TestLogFileBigWrite(t *testing.T) {
	dir, l := testLog(t, 1000)
	big := bytes.Repeat([]byte("0123456789"), 350)
	if n, err := l.stream(StreamStderr).Write(append(big, '\n')); n != len(big)+1 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	l.Close()
	cur, _ := os.ReadFile(LogFile(dir, "web"))
	old, _ := os.ReadFile(OldLogFile(dir, "web"))
	if len(cur) > 1000 || len(old) > 1000 {
		t.Fatalf("parts of %d and %d bytes", len(old), len(cur))
	}
	es := readAll(t, dir, "web", LogOptions{Tail: -1})
	// The older part is gone: what is left is the line's end.
	if len(es) != 1 || !strings.HasSuffix(string(big), es[0].Line) || len(es[0].Line) < 900 || es[0].Stream != StreamStderr || es[0].Partial {
		t.Fatalf("entries %+v", es)
	}
}

// Two writers at once (stdout and stderr) lose nothing.
func TestLogFileConcurrent(t *testing.T) {
	dir, l := testLog(t, -1)
	var wg sync.WaitGroup
	for _, s := range []string{StreamStdout, StreamStderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				l.stream(s).Write([]byte("0123456789\n"))
			}
		}()
	}
	wg.Wait()
	l.Close()
	es := readAll(t, dir, "web", LogOptions{Tail: -1})
	n := map[string]int{}
	for _, e := range es {
		if e.Line != "0123456789" {
			t.Fatalf("line %q", e.Line)
		}
		n[e.Stream]++
	}
	if n[StreamStdout] != 1000 || n[StreamStderr] != 1000 {
		t.Fatalf("lines per stream: %v", n)
	}
}

// Lines carry the time they were written; --since and --until select by
// it, --tail counts what is left; a line written in two pieces is one
// entry with the first piece's time, and an unfinished one is Partial.
// A log from before times (bare lines) is still read, the lines with no
// time and no stream, and no time bound selects them.
func TestLogTimes(t *testing.T) {
	dir, l := testLog(t, -1)
	if err := os.WriteFile(LogFile(dir, "web"), []byte("[vessel 2026-01-01T00:00:00Z] starting web (sha256:1)\nold line\n2026 odd stdout F x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l, err := openLog(LogFile(dir, "web"), -1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t0 := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	at := func(min int) { l.now = func() time.Time { return t0.Add(time.Duration(min) * time.Minute) } }
	at(0)
	l.vesself("starting web (sha256:2)")
	at(1)
	l.stream(StreamStdout).Write([]byte("one\ntw"))
	at(2)
	l.stream(StreamStderr).Write([]byte("err\n"))
	l.stream(StreamStdout).Write([]byte("o\nthr"))
	at(3)
	l.stream(StreamStdout).Write([]byte("ee"))

	all := readAll(t, dir, "web", LogOptions{Tail: -1})
	want := []LogEntry{
		{Line: "[vessel 2026-01-01T00:00:00Z] starting web (sha256:1)"},
		{Line: "old line"},
		{Line: "2026 odd stdout F x"},
		{Time: t0, Stream: StreamVessel, Line: "starting web (sha256:2)"},
		{Time: t0.Add(time.Minute), Stream: StreamStdout, Line: "one"},
		{Time: t0.Add(2 * time.Minute), Stream: StreamStderr, Line: "err"},
		{Time: t0.Add(time.Minute), Stream: StreamStdout, Line: "two"},
		{Time: t0.Add(2 * time.Minute), Stream: StreamStdout, Line: "three", Partial: true},
	}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("entries:\n%v\nwant\n%v", all, want)
	}
	since := readAll(t, dir, "web", LogOptions{Tail: -1, Since: t0.Add(90 * time.Second)})
	if fmt.Sprint(since) != fmt.Sprint([]LogEntry{want[5], want[7]}) {
		t.Errorf("since +90s: %v", since)
	}
	until := readAll(t, dir, "web", LogOptions{Tail: -1, Until: t0.Add(time.Minute)})
	if fmt.Sprint(until) != fmt.Sprint([]LogEntry{want[3], want[4], want[6]}) {
		t.Errorf("until +1m: %v", until)
	}
	tail := readAll(t, dir, "web", LogOptions{Tail: 2, Since: t0})
	if fmt.Sprint(tail) != fmt.Sprint(want[6:]) {
		t.Errorf("tail 2: %v", tail)
	}
	if _, err := os.Stat(LogFile(dir, "nosuch")); err == nil {
		t.Fatal("nosuch exists")
	}
	err = ReadLog(context.Background(), dir, "nosuch", LogOptions{Tail: -1}, func(LogEntry) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `no logs for service "nosuch"`) {
		t.Errorf("missing log: %v", err)
	}
}
