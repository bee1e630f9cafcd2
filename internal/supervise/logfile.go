package supervise

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
)

// DefaultLogMax is the size at which a service's log is rotated.
const DefaultLogMax = 10 << 20

// OldLogFile is where the previous part of a rotated log is kept: one
// generation, so a service's logs take at most twice the cap.
func OldLogFile(dir, name string) string { return LogFile(dir, name) + ".1" }

// logFile is a service's log: appended to, and rotated once it would grow
// past max (renamed to OldLogFile, replacing the older part). A chatty
// service thus cannot fill the data partition. Safe for concurrent use
// (stdout and stderr are copied into it from two pipes).
type logFile struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
}

func openLog(path string, max int64) (*logFile, error) {
	l := &logFile{path: path, max: max}
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

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, errors.New("log closed")
	}
	if l.max <= 0 {
		n, err := l.f.Write(p)
		l.size += int64(n)
		return n, err
	}
	// A write larger than what is left goes in pieces, rotating between
	// them (a pipe delivers up to 32 KiB at once); vessel logs joins the
	// parts again.
	written := 0
	for len(p) > 0 {
		if l.size >= l.max {
			if err := l.rotate(); err != nil {
				return written, fmt.Errorf("rotate %s: %w", l.path, err)
			}
		}
		chunk := p[:min(int64(len(p)), l.max-l.size)]
		n, err := l.f.Write(chunk)
		l.size += int64(n)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
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
