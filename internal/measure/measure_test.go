package measure

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTPM is a sha256 bank kept in memory; the simulator test checks the
// real TPM against Replay independently.
type fakeTPM struct {
	pcrs map[int][]byte
	fail error
}

func (f *fakeTPM) Extend(pcr int, data []byte) error {
	if f.fail != nil {
		return f.fail
	}
	if f.pcrs == nil {
		f.pcrs = map[int][]byte{}
	}
	v := f.pcrs[pcr]
	if v == nil {
		v = make([]byte, 32)
	}
	f.pcrs[pcr] = ExtendSHA256(v, data)
	return nil
}

func TestMeasureReplays(t *testing.T) {
	l := Log{Path: filepath.Join(t.TempDir(), "run", "m.jsonl")}
	tpm := &fakeTPM{}
	m := Manifest{Digest: "sha256:" + strings.Repeat("ab", 32), ProductID: "0d2f4b3e-1111-4222-8333-444455556666", Version: 7}
	for _, ev := range []Event{ManifestEvent(m), NewEvent(7, TypeLock, "lock")} {
		if err := l.Measure(tpm, ev); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := Read(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 {
		t.Fatalf("got %d events, want 2", len(evs))
	}
	got, n := Replay(evs, PCR)
	if n != 1 || !bytes.Equal(got, tpm.pcrs[PCR]) {
		t.Fatalf("replay PCR %d = %x (%d events), TPM has %x", PCR, got, n, tpm.pcrs[PCR])
	}
	// Replay computed by hand: sha256(zeros || sha256(data)).
	if want := ExtendSHA256(make([]byte, 32), []byte(evs[0].Data)); !bytes.Equal(got, want) {
		t.Fatalf("replay %x, want %x", got, want)
	}
	back, err := ParseManifest(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	if back != m {
		t.Fatalf("manifest event read back as %+v, want %+v", back, m)
	}
	if _, err := ParseManifest(evs[1]); err == nil {
		t.Fatal("a lock event parsed as a manifest event")
	}
}

func TestMeasureLogsNothingWhenTheTPMFails(t *testing.T) {
	l := Log{Path: filepath.Join(t.TempDir(), "m.jsonl")}
	err := l.Measure(&fakeTPM{fail: os.ErrPermission}, NewEvent(PCR, TypeLock, "x"))
	if err == nil || !strings.Contains(err.Error(), "PCR 15") {
		t.Fatalf("err = %v, want a failure naming PCR 15", err)
	}
	if _, err := os.Stat(l.Path); !os.IsNotExist(err) {
		t.Fatalf("the log was written for an event the TPM refused (stat: %v)", err)
	}
}

func TestParseRefusesAlteredLogs(t *testing.T) {
	good := NewEvent(PCR, TypeManifest, "manifest=sha256:00 product=p version=1")
	for name, line := range map[string]string{
		"data changed":  strings.Replace(mustJSON(t, good), "version=1", "version=2", 1),
		"unknown field": strings.Replace(mustJSON(t, good), `"pcr"`, `"extra":1,"pcr"`, 1),
		"pcr range":     strings.Replace(mustJSON(t, good), `"pcr":15`, `"pcr":24`, 1),
		"not json":      "{",
	} {
		if _, err := Parse([]byte(line + "\n")); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if evs, err := Parse([]byte(mustJSON(t, good) + "\n\n")); err != nil || len(evs) != 1 {
		t.Fatalf("good log: %v, %d events", err, len(evs))
	}
	if evs, err := Read(filepath.Join(t.TempDir(), "missing")); err != nil || evs != nil {
		t.Fatalf("missing log: %v %v, want an empty log", evs, err)
	}
}

func TestParseManifestRefusesMalformed(t *testing.T) {
	for _, data := range []string{
		"manifest=sha256:00 product=p",
		"manifest=md5:00 product=p version=1",
		"manifest=sha256:00 product=p version=x",
		"manifest=sha256:00 product=p version=-1",
		"manifest=sha256:00 product=p version=1 extra=2",
		"manifest sha256:00 product=p version=1",
	} {
		if _, err := ParseManifest(NewEvent(PCR, TypeManifest, data)); err == nil {
			t.Errorf("%q parsed", data)
		}
	}
}

func mustJSON(t *testing.T, ev Event) string {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
