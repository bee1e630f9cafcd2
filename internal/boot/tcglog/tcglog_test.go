package tcglog_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/boot/tcglog"
)

func sum(s string) []byte  { h := sha256.Sum256([]byte(s)); return h[:] }
func sum1(s string) []byte { h := sha1.Sum([]byte(s)); return h[:] }

func sample() *tcglog.Log {
	ev := func(pcr, typ uint32, data string) tcglog.Event {
		return tcglog.Event{PCR: pcr, Type: typ, Data: []byte(data),
			Digests: map[uint16][]byte{tcglog.AlgSHA256: sum(data), tcglog.AlgSHA1: sum1(data)}}
	}
	return &tcglog.Log{
		DigestSizes: map[uint16]int{tcglog.AlgSHA1: 20, tcglog.AlgSHA256: 32},
		Events: []tcglog.Event{
			ev(7, 0x80000001, "SecureBoot"),
			ev(0, 0x8, "crtm"),
			ev(7, 0x80000001, "PK"),
			ev(7, tcglog.EvNoAction, "not extended"),
			ev(7, 0x4, "separator"),
			ev(7, 0x800000e0, "db authority"),
		},
	}
}

// TestReplay checks the replay against extending by hand.
func TestReplay(t *testing.T) {
	l, err := tcglog.Parse(sample().Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) != 6 {
		t.Fatalf("%d events", len(l.Events))
	}
	got, n, err := l.Replay(7, tcglog.AlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	pcr := make([]byte, 32)
	for _, d := range []string{"SecureBoot", "PK", "separator", "db authority"} {
		h := sha256.New()
		h.Write(pcr)
		h.Write(sum(d))
		pcr = h.Sum(nil)
	}
	if !bytes.Equal(got, pcr) || n != 4 {
		t.Fatalf("replay %x from %d events, want %x from 4", got, n, pcr)
	}
	if _, _, err := l.Replay(7, tcglog.AlgSHA1); err == nil {
		t.Fatal("sha1 replay should be refused")
	}
	empty, n, _ := l.Replay(9, tcglog.AlgSHA256)
	if n != 0 || !bytes.Equal(empty, make([]byte, 32)) {
		t.Fatalf("PCR 9: %x %d", empty, n)
	}
}

func TestParseRefusesBadLogs(t *testing.T) {
	good := sample().Marshal()
	for name, b := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)-3],
		"no spec":   append([]byte{0, 0, 0, 0, 1, 0, 0, 0}, good[8:]...),
	} {
		if _, err := tcglog.Parse(b); err == nil || !strings.HasPrefix(err.Error(), "event log") {
			t.Errorf("%s: want an event log error, got %v", name, err)
		}
	}
	// a log with sha256 digests only
	l2 := sample()
	l2.DigestSizes = map[uint16]int{tcglog.AlgSHA256: 32}
	for i := range l2.Events {
		delete(l2.Events[i].Digests, tcglog.AlgSHA1)
	}
	if _, err := tcglog.Parse(l2.Marshal()); err != nil {
		t.Fatalf("sha256-only log: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample().Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := tcglog.Parse(b)
		if err == nil {
			l.Replay(7, tcglog.AlgSHA256)
		}
	})
}
