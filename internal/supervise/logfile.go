package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultLogMax is the size at which a service's log is rotated.
const DefaultLogMax = 10 << 20

// OldLogFile is where the previous part of a rotated log is kept: one
// generation, so a service's logs take at most twice the cap.
func OldLogFile(dir, name string) string { return LogFile(dir, name) + ".1" }

// Log streams: what the service wrote to stdout or stderr, and vessel's
// own lines (start, exit, notes).
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	StreamVessel = "vessel"
)

// logTimeFormat is the fixed-width time at the start of each record, so
// records sort as text.
const logTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// A log holds one record per line, as podman's k8s-file log driver does:
//
//	TIME STREAM F|P TEXT
//
// TIME in logTimeFormat (UTC), STREAM one of the Stream constants, F for
// a full line and P for part of a line that the next record of the stream
// continues (output without a newline yet, or a line longer than the
// cap). Logs written before records had times hold bare lines; ReadLog
// returns those with a zero time.

// logFile is a service's log: appended to, and rotated once it would grow
// past max (renamed to OldLogFile, replacing the older part). A chatty
// service thus cannot fill the data partition. Records are never split
// between the two parts. Safe for concurrent use (stdout and stderr are
// copied into it from two pipes).
type logFile struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
	now  func() time.Time // time.Now; tests set it
}

func openLog(path string, max int64) (*logFile, error) {
	l := &logFile{path: path, max: max, now: time.Now}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *logFile) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// stream returns the writer for one stream: each write becomes records.
func (l *logFile) stream(name string) io.Writer { return streamWriter{l, name} }

type streamWriter struct {
	l    *logFile
	name string
}

func (w streamWriter) Write(p []byte) (int, error) {
	if err := w.l.write(w.name, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// vesself writes one or more of vessel's own lines, in one write (a
// reader sees all of them or none).
func (l *logFile) vesself(format string, args ...any) error {
	s := fmt.Sprintf(format, args...)
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return l.write(StreamVessel, []byte(s))
}

// write turns p into records (a full record per line, a P record for a
// piece without its newline or one too long for the cap) and appends
// them, rotating between records so that no part passes the cap.
func (l *logFile) write(stream string, p []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("log closed")
	}
	head := l.now().UTC().Format(logTimeFormat) + " " + stream + " "
	// The longest text one record may carry: a record fits in an empty
	// part (at least a few bytes, for absurdly small caps).
	maxText := len(p) + 1
	if l.max > 0 {
		maxText = max(int(l.max)-len(head)-3, 16)
	}
	var buf bytes.Buffer
	flush := func() error {
		if buf.Len() == 0 {
			return nil
		}
		if l.max > 0 && l.size > 0 && l.size+int64(buf.Len()) > l.max {
			if err := l.rotate(); err != nil {
				return fmt.Errorf("rotate %s: %w", l.path, err)
			}
		}
		n, err := l.f.Write(buf.Bytes())
		l.size += int64(n)
		buf.Reset()
		return err
	}
	for len(p) > 0 {
		line := p
		full := false
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line, full = p[:i], true
		}
		if len(line) > maxText {
			line, full = line[:maxText], false
		}
		p = p[len(line):]
		if full {
			p = p[1:]
		}
		flag := "P "
		if full {
			flag = "F "
		}
		rec := len(head) + len(flag) + len(line) + 1
		if l.max > 0 && buf.Len() > 0 && l.size+int64(buf.Len()+rec) > l.max {
			if err := flush(); err != nil {
				return err
			}
		}
		buf.WriteString(head)
		buf.WriteString(flag)
		buf.Write(line)
		buf.WriteByte('\n')
	}
	return flush()
}

func (l *logFile) rotate() error {
	if err := l.f.Close(); err != nil {
		return err
	}
	l.f = nil
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return err
	}
	return l.open()
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
