package update

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/proc"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/supervise"
	"github.com/vesselos/vessel/internal/trust"
)

// fakeSupervisor writes what a running vessel up of manifest signed shows:
// this process as its owner and web in state.
func fakeSupervisor(t *testing.T, f *fixture, signed []byte, state string, restarts int) string {
	t.Helper()
	dir := t.TempDir()
	vm, err := trust.Verify(signed, trust.Options{CAs: f.p.CAs})
	if err != nil {
		t.Fatal(err)
	}
	write := func(p string, v any) {
		b, _ := json.Marshal(v)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "supervisor.json"), supervise.Info{Owner: proc.Self(), Product: testPID, Version: vm.Version(), Manifest: vm.Digest().String(), Services: []string{"web"}})
	write(filepath.Join(dir, "services", "web.json"), supervise.Status{Name: "web", State: state, Restarts: restarts, Restart: "always"})
	return dir
}

// stageAndBoot stages signed and plays the initrd's trial boot.
func stageAndBoot(t *testing.T, f *fixture, signed []byte) string {
	t.Helper()
	if _, err := Stage(context.Background(), f.machine, signed, f.fromHere); err != nil {
		t.Fatal(err)
	}
	var booted string
	if _, err := Modify(f.machine.Root(), func(s *State) error { booted, _, _ = s.Boot(testNow, ""); return nil }); err != nil {
		t.Fatal(err)
	}
	return booted
}

// A trial whose services stay up and whose health command passes becomes
// the default and advances the accepted version; one whose health command
// fails is recorded as failed with the command's output, and nothing else
// moves.
func TestCheck(t *testing.T) {
	f := newFixture(t)
	root := f.machine.Root()
	booted := stageAndBoot(t, f, f.p.sign(t, "acme", 2, f.host, f.web[2], "/bin/check", "web"))
	var ran []string
	counter := &fakeCounter{}
	opts := CheckOptions{Trust: f.p.opts(), Booted: booted, Window: 200 * time.Millisecond, Interval: 20 * time.Millisecond, Counter: counter,
		Run: func(ctx context.Context, argv []string) error {
			ran = append(ran, strings.Join(argv, " "))
			return nil
		}}
	// ECDSA signatures differ per call: the supervisor runs the staged bytes
	st := readState(t, root)
	signed2, _ := os.ReadFile(filepath.Join(root, st.Slots[booted].Signed))
	opts.SuperviseDir = fakeSupervisor(t, f, signed2, supervise.StateRunning, 0)
	res, err := Check(context.Background(), f.machine, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Trial || res.Outcome != OutcomeGood || len(ran) < 2 || ran[0] != "/bin/check web" {
		t.Fatalf("check %+v, health commands run %v", res, ran)
	}
	if s := readState(t, root); s.Default != booted || s.Trial != nil || accepted(t, root) != 2 {
		t.Fatalf("after a passing check: %+v accepted %d", s, accepted(t, root))
	}
	if cur, _ := registry.ReadCurrent(root); cur.Version != 2 {
		t.Fatalf("current.json: %d", cur.Version)
	}
	if fmt.Sprint(counter.advanced) != "[2]" {
		t.Fatalf("TPM counter advanced to %v, want [2]", counter.advanced)
	}
	// not a trial any more: nothing to do
	if res, err := Check(context.Background(), f.machine, opts); err != nil || res.Trial {
		t.Fatalf("second check: %+v %v", res, err)
	}

	// v3: the health command fails
	booted = stageAndBoot(t, f, f.p.sign(t, "acme", 3, f.host, f.web[3], "/bin/check", "web"))
	st = readState(t, root)
	signed3, _ := os.ReadFile(filepath.Join(root, st.Slots[booted].Signed))
	opts.Booted = booted
	opts.SuperviseDir = fakeSupervisor(t, f, signed3, supervise.StateRunning, 0)
	opts.Run = func(ctx context.Context, argv []string) error { return errors.New("exit status 1: connection refused") }
	res, err = Check(context.Background(), f.machine, opts)
	if !errors.Is(err, ErrUnhealthy) || res.Outcome != OutcomeFailed || !strings.Contains(res.Why, "health command /bin/check web: exit status 1: connection refused") {
		t.Fatalf("failing health command: %+v %v", res, err)
	}
	s := readState(t, root)
	if s.Default == booted || s.Trial != nil || s.Last.Outcome != OutcomeFailed || s.Last.Version != 3 || !strings.Contains(s.Last.Why, "connection refused") || accepted(t, root) != 2 {
		t.Fatalf("after a failing check: %+v %+v accepted %d", s, s.Last, accepted(t, root))
	}
	if cur, _ := registry.ReadCurrent(root); cur.Version != 2 {
		t.Fatalf("current.json: %d", cur.Version)
	}
	if fmt.Sprint(counter.advanced) != "[2]" {
		t.Fatalf("a failed trial moved the TPM counter: %v", counter.advanced)
	}
	// next boot: the default
	if got, trial, _ := s.Boot(testNow, ""); got != SlotB || trial {
		t.Fatalf("next boot %s %v", got, trial)
	}
}

// A service in backoff (it keeps exiting) fails the check at once.
func TestCheckServiceDown(t *testing.T) {
	f := newFixture(t)
	root := f.machine.Root()
	booted := stageAndBoot(t, f, f.signed[2])
	opts := CheckOptions{Trust: f.p.opts(), Booted: booted, Window: time.Hour, Interval: 20 * time.Millisecond,
		SuperviseDir: fakeSupervisor(t, f, f.signed[2], supervise.StateBackoff, 3)}
	start := time.Now()
	res, err := Check(context.Background(), f.machine, opts)
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(res.Why, "service web is backoff") {
		t.Fatalf("%+v %v", res, err)
	}
	if time.Since(start) > time.Minute {
		t.Fatal("waited for a service that keeps failing")
	}
	if accepted(t, root) != 1 || readState(t, root).Default != SlotA {
		t.Fatal("a failed check moved the default or the accepted version")
	}
}

// fakeCounter stands for the TPM's NV counter (tpm.TPM.AdvanceVersion has
// its own tests on the simulator and swtpm).
type fakeCounter struct{ advanced []uint64 }

func (c *fakeCounter) AdvanceVersion(v uint64) (uint64, error) {
	c.advanced = append(c.advanced, v)
	return v, nil
}
