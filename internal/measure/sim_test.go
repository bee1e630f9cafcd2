//go:build tpmsim

package measure_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/tpm"
)

// TestReplayMatchesTheTPM extends the reference TPM simulator through the
// log and checks the PCR the TPM reports against the log's replay.
func TestReplayMatchesTheTPM(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tp := tpm.New(transport.FromReadWriter(sim), nil, "simulator")
	l := measure.Log{Path: filepath.Join(t.TempDir(), "m.jsonl")}
	evs := []measure.Event{
		measure.ManifestEvent(measure.Manifest{Digest: "sha256:00", ProductID: "p", Version: 3}),
		measure.NewEvent(7, measure.TypeLock, tpm.LockEvent),
	}
	before7, err := tp.PCR(7)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if err := l.Measure(tp, ev); err != nil {
			t.Fatal(err)
		}
	}
	got, err := measure.Read(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	want, n := measure.Replay(got, measure.PCR)
	have, err := tp.PCR(measure.PCR)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || !bytes.Equal(have, want) {
		t.Fatalf("TPM PCR %d = %x, log replays to %x (%d events)", measure.PCR, have, want, n)
	}
	// PCR7 started elsewhere (the simulator's own history): the lock is
	// one extension of it, which is also what tpm.Lock does.
	have7, err := tp.PCR(7)
	if err != nil {
		t.Fatal(err)
	}
	if want7 := measure.ExtendSHA256(before7, []byte(tpm.LockEvent)); !bytes.Equal(have7, want7) {
		t.Fatalf("PCR7 after the lock event = %x, want %x", have7, want7)
	}
	if err := tp.Extend(24, nil); err == nil {
		t.Fatal("extending PCR 24 succeeded")
	}
}
