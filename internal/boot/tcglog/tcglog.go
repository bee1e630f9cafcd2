// Package tcglog parses a TPM 2.0 crypto-agile event log (TCG PC Client
// Platform Firmware Profile: the format of
// /sys/kernel/security/tpm0/binary_bios_measurements) and replays it: the
// value each PCR must hold if the log is complete and true.
//
// It is small on purpose: the PID-1 stage uses it to check PCR7 against
// the log. Richer analysis (event data, policies) belongs to the TPM code.
package tcglog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// Algorithm identifiers (TPM_ALG_ID).
const (
	AlgSHA1   uint16 = 0x0004
	AlgSHA256 uint16 = 0x000B
	AlgSHA384 uint16 = 0x000C
	AlgSHA512 uint16 = 0x000D
)

// Event types used here.
const (
	EvNoAction uint32 = 0x00000003 // not extended into any PCR
)

// maxEvents and maxEventSize bound what a corrupt log can make us allocate.
const (
	maxEvents    = 1 << 16
	maxEventSize = 1 << 24
)

// Event is one measurement.
type Event struct {
	PCR     uint32
	Type    uint32
	Digests map[uint16][]byte // by algorithm
	Data    []byte
}

// Log is a parsed event log.
type Log struct {
	DigestSizes map[uint16]int // from the Spec ID event
	Events      []Event        // after the Spec ID event
}

var specID = []byte("Spec ID Event03\x00")

// Parse parses a crypto-agile log. It refuses SHA1-only (TPM 1.2 style)
// logs and truncated or oversized records, naming the event.
func Parse(b []byte) (*Log, error) {
	r := &reader{b: b}
	// The first event is in the old TCG_PCR_EVENT format.
	_ = r.u32() // pcr
	typ := r.u32()
	r.skip(20)
	n := r.u32()
	if r.err != nil {
		return nil, fmt.Errorf("event log: header: %w", r.err)
	}
	if typ != EvNoAction || n > maxEventSize {
		return nil, errors.New("event log: no Spec ID event: not a crypto-agile (TPM 2.0) log")
	}
	spec := r.bytes(int(n))
	if r.err != nil || !bytes.HasPrefix(spec, specID) || len(spec) < 28 {
		return nil, errors.New("event log: no Spec ID Event03: not a crypto-agile (TPM 2.0) log")
	}
	s := &reader{b: spec[24:]} // signature 16, platform class 4, version 4
	algs := s.u32()
	if algs == 0 || algs > 16 {
		return nil, fmt.Errorf("event log: Spec ID event lists %d algorithms", algs)
	}
	l := &Log{DigestSizes: map[uint16]int{}}
	for i := uint32(0); i < algs; i++ {
		id, size := s.u16(), s.u16()
		l.DigestSizes[id] = int(size)
	}
	if s.err != nil {
		return nil, fmt.Errorf("event log: Spec ID event: %w", s.err)
	}
	for len(r.b) > r.off {
		i := len(l.Events)
		if i >= maxEvents {
			return nil, fmt.Errorf("event log: more than %d events", maxEvents)
		}
		e := Event{PCR: r.u32(), Type: r.u32(), Digests: map[uint16][]byte{}}
		count := r.u32()
		if r.err != nil {
			return nil, fmt.Errorf("event log: event %d: %w", i, r.err)
		}
		if count > 16 {
			return nil, fmt.Errorf("event log: event %d: %d digests", i, count)
		}
		for j := uint32(0); j < count; j++ {
			alg := r.u16()
			size, ok := l.DigestSizes[alg]
			if !ok && r.err == nil {
				return nil, fmt.Errorf("event log: event %d: digest algorithm %#04x not in the Spec ID event", i, alg)
			}
			e.Digests[alg] = r.bytes(size)
		}
		n := r.u32()
		if n > maxEventSize {
			return nil, fmt.Errorf("event log: event %d: event data of %d bytes", i, n)
		}
		e.Data = r.bytes(int(n))
		if r.err != nil {
			return nil, fmt.Errorf("event log: event %d: %w", i, r.err)
		}
		l.Events = append(l.Events, e)
	}
	return l, nil
}

// Replay returns the value PCR pcr has after extending, from zero, every
// event of that PCR with its digest of algorithm alg (only SHA-256 is
// supported), and how many events went into it. EV_NO_ACTION events are not
// extended.
func (l *Log) Replay(pcr uint32, alg uint16) ([]byte, int, error) {
	if alg != AlgSHA256 {
		return nil, 0, fmt.Errorf("replay: algorithm %#04x: only sha256 is supported", alg)
	}
	v := make([]byte, sha256.Size)
	n := 0
	for i, e := range l.Events {
		if e.PCR != pcr || e.Type == EvNoAction {
			continue
		}
		d, ok := e.Digests[alg]
		if !ok {
			return nil, 0, fmt.Errorf("replay: event %d of PCR %d has no sha256 digest", i, pcr)
		}
		h := sha256.New()
		h.Write(v)
		h.Write(d)
		v = h.Sum(nil)
		n++
	}
	return v, n, nil
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = fmt.Errorf("truncated at byte %d (want %d more)", r.off, n)
		return nil
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b
}

func (r *reader) skip(n int) { r.bytes(n) }

func (r *reader) u32() uint32 {
	b := r.bytes(4)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (r *reader) u16() uint16 {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint16(b)
}

// Marshal encodes the log in the crypto-agile format Parse reads: a Spec
// ID event listing DigestSizes (in ascending algorithm order), then the
// events. Tests use it to make logs; the TPM code can use it to write
// the log it predicts.
func (l *Log) Marshal() []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	algs := make([]uint16, 0, len(l.DigestSizes))
	for a := range l.DigestSizes {
		algs = append(algs, a)
	}
	sort.Slice(algs, func(i, j int) bool { return algs[i] < algs[j] })
	var spec bytes.Buffer
	spec.Write(specID)
	binary.Write(&spec, le, uint32(0)) // platform class
	spec.Write([]byte{0, 2, 0, 2})     // spec version 2.0, errata 0, uintn size 2 (8 bytes)
	binary.Write(&spec, le, uint32(len(algs)))
	for _, a := range algs {
		binary.Write(&spec, le, a)
		binary.Write(&spec, le, uint16(l.DigestSizes[a]))
	}
	spec.WriteByte(0) // vendor info size
	binary.Write(&b, le, uint32(0))
	binary.Write(&b, le, EvNoAction)
	b.Write(make([]byte, 20))
	binary.Write(&b, le, uint32(spec.Len()))
	b.Write(spec.Bytes())
	for _, e := range l.Events {
		binary.Write(&b, le, e.PCR)
		binary.Write(&b, le, e.Type)
		binary.Write(&b, le, uint32(len(e.Digests)))
		for _, a := range algs {
			if d, ok := e.Digests[a]; ok {
				binary.Write(&b, le, a)
				b.Write(d)
			}
		}
		binary.Write(&b, le, uint32(len(e.Data)))
		b.Write(e.Data)
	}
	return b.Bytes()
}
