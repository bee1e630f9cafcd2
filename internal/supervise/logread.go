package supervise

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// LogEntry is one line of a service's log.
type LogEntry struct {
	// Time the line was written; zero for a line of a log written before
	// vessel stored times.
	Time   time.Time `json:"time,omitzero"`
	Stream string    `json:"stream,omitempty"` // StreamStdout, StreamStderr or StreamVessel; empty for an old line
	Line   string    `json:"line"`             // without its newline
	// Partial: the line has no newline yet (the service is still writing
	// it, or it ended without one).
	Partial bool `json:"partial,omitempty"`
}

// LogOptions choose the entries ReadLog returns, as podman logs does.
type LogOptions struct {
	Since, Until time.Time // zero: no bound; lines without a time match neither bound
	Tail         int       // only the last Tail entries that match (-1: all)
	Follow       bool      // go on with new entries until ctx ends or the supervisor stops
}

// ErrNoLog means a service has no log (no such service has run).
var ErrNoLog = errors.New("no logs")

// ReadLog calls emit with service name's log entries, oldest first,
// across a rotation (the older part first). With opts.Follow it then
// emits new entries as they are written until ctx ends (returning
// ctx.Err()) or no supervisor runs any more (returning nil).
func ReadLog(ctx context.Context, dir, name string, opts LogOptions, emit func(LogEntry) error) error {
	path := LogFile(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w for service %q", ErrNoLog, name)
	}
	if err != nil {
		return fmt.Errorf("read log of %s: %w", name, err)
	}
	defer func() { f.Close() }()
	var entries []LogEntry
	keep := func(e LogEntry) error {
		if opts.match(e) {
			entries = append(entries, e)
		}
		return nil
	}
	var p logParser
	if old, err := os.Open(OldLogFile(dir, name)); err == nil {
		err := p.feed(old, keep)
		old.Close()
		if err != nil {
			return fmt.Errorf("read log of %s: %w", name, err)
		}
	}
	if err := p.feed(f, keep); err != nil {
		return fmt.Errorf("read log of %s: %w", name, err)
	}
	if !opts.Follow {
		p.end(keep)
	}
	if opts.Tail >= 0 && len(entries) > opts.Tail {
		entries = entries[len(entries)-opts.Tail:]
	}
	for _, e := range entries {
		if err := emit(e); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	filtered := func(e LogEntry) error {
		if opts.match(e) {
			return emit(e)
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if err := p.feed(f, filtered); err != nil {
			return err
		}
		// Rotated: finish the old file, go on with the new one.
		if cur, err := os.Stat(path); err == nil {
			if fi, err := f.Stat(); err == nil && !os.SameFile(cur, fi) {
				if err := p.feed(f, filtered); err != nil {
					return err
				}
				nf, err := os.Open(path)
				if err != nil {
					return fmt.Errorf("read log of %s: %w", name, err)
				}
				f.Close()
				f = nf
				continue
			}
		}
		if _, err := Running(dir); err != nil {
			if err := p.feed(f, filtered); err != nil {
				return err
			}
			return p.end(filtered)
		}
	}
}

func (o LogOptions) match(e LogEntry) bool {
	if o.Since.IsZero() && o.Until.IsZero() {
		return true
	}
	if e.Time.IsZero() {
		return false
	}
	return !e.Time.Before(o.Since) && (o.Until.IsZero() || !e.Time.After(o.Until))
}

// logParser turns a log's bytes into entries, joining a line's P records.
type logParser struct {
	rest    []byte              // a record not yet complete (no newline read)
	pending map[string]LogEntry // per stream: a line still being written
}

// feed reads r to its end and emits each complete line. A line split
// between P records waits for its end; end emits it.
func (p *logParser) feed(r io.Reader, emit func(LogEntry) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			p.rest = append(p.rest, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		rec := bytes.TrimSuffix(p.rest, []byte("\n"))
		e, partial := parseRecord(rec)
		p.rest = p.rest[:0]
		if e.Stream != "" {
			if prev, ok := p.pending[e.Stream]; ok {
				prev.Line += e.Line
				e.Time = prev.Time
				e.Line = prev.Line
				delete(p.pending, e.Stream)
			}
			if partial {
				if p.pending == nil {
					p.pending = map[string]LogEntry{}
				}
				p.pending[e.Stream] = e
				continue
			}
		}
		if err := emit(e); err != nil {
			return err
		}
	}
}

// end emits the lines that have no end yet (marked Partial), in the
// order they were begun.
func (p *logParser) end(emit func(LogEntry) error) error {
	for _, s := range []string{StreamStdout, StreamStderr, StreamVessel} {
		if e, ok := p.pending[s]; ok {
			delete(p.pending, s)
			e.Partial = true
			if err := emit(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// parseRecord reads "TIME STREAM F|P TEXT"; anything else is a line of an
// old log, returned whole with no time and no stream.
func parseRecord(rec []byte) (e LogEntry, partial bool) {
	old := LogEntry{Line: string(rec)}
	t, rest, ok := bytes.Cut(rec, []byte(" "))
	if !ok || len(t) != len(logTimeFormat)-5 { // ...Z07:00 is written as Z
		return old, false
	}
	tm, err := time.Parse(logTimeFormat, string(t))
	if err != nil {
		return old, false
	}
	stream, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return old, false
	}
	switch s := string(stream); s {
	case StreamStdout, StreamStderr, StreamVessel:
		e.Stream = s
	default:
		return old, false
	}
	flag, text, ok := bytes.Cut(rest, []byte(" "))
	if !ok || (string(flag) != "F" && string(flag) != "P") {
		return old, false
	}
	e.Time, e.Line = tm, string(text)
	return e, string(flag) == "P"
}
