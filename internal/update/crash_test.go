package update

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// TestHelperProcess is the process the crash tests kill: it runs only
// when VESSEL_UPDATE_HELPER says what to do.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("VESSEL_UPDATE_HELPER") {
	case "stage":
		machine, err := store.Open(os.Getenv("MACHINE"))
		if err != nil {
			panic(err)
		}
		build, err := store.Open(os.Getenv("BUILD"))
		if err != nil {
			panic(err)
		}
		cas, err := trust.LoadCerts(os.Getenv("CA"))
		if err != nil {
			panic(err)
		}
		signed, err := os.ReadFile(os.Getenv("SIGNED"))
		if err != nil {
			panic(err)
		}
		c, _ := registry.New(registry.Options{})
		_, err = Stage(context.Background(), machine, signed, StageOptions{Trust: trust.Options{CAs: cas, ProductID: testPID}, Client: c,
			From: func(d digest.Digest) registry.Endpoint { return registry.Store(build, d.String()) }})
		if err != nil {
			panic(err)
		}
		os.Exit(0)
	case "write":
		root := os.Getenv("MACHINE")
		for i := int64(1); ; i++ {
			s := oneSlot()
			s.Slots[SlotA].Version = i
			s.Slots[SlotA].Signed = strings.Repeat("x", int(i%4096)+1) // sizes vary
			if err := Write(root, s); err != nil {
				panic(err)
			}
		}
	}
}

func helper(t *testing.T, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd
}

// A vessel update killed (SIGKILL) just before and just after its commit
// point leaves the old slots or the new ones, never a mix; every image a
// slot references verifies, and the signed manifests they name exist.
func TestStageKilled(t *testing.T) {
	for _, point := range []string{FaultBeforeCommit, FaultAfterCommit} {
		t.Run(point, func(t *testing.T) {
			f := newFixture(t)
			root := f.machine.Root()
			dir := t.TempDir()
			signed := filepath.Join(dir, "m.signed")
			os.WriteFile(signed, f.signed[2], 0o644)
			pidFile := filepath.Join(dir, "pid")
			cmd := helper(t, "VESSEL_UPDATE_HELPER=stage", "MACHINE="+root, "BUILD="+f.build.Root(), "CA="+filepath.Join(f.p.Dir, trust.ManifestCACert),
				"SIGNED="+signed, "VESSEL_FAULT_PAUSE="+point, "VESSEL_FAULT_FILE="+pidFile)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			waitFile(t, pidFile, 60*time.Second)
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			s := readState(t, root)
			switch point {
			case FaultBeforeCommit:
				if s.Trial != nil || s.Slots[SlotB] != nil {
					t.Fatalf("killed before the commit, yet %+v", s)
				}
			case FaultAfterCommit:
				if s.Trial == nil || s.Trial.Slot != SlotB || s.Slots[SlotB].Version != 2 {
					t.Fatalf("killed after the commit, yet %+v", s)
				}
			}
			checkReferenced(t, f.machine, s)
			// running it again finishes the job
			if point == FaultBeforeCommit {
				if _, err := Stage(context.Background(), f.machine, f.signed[2], f.fromHere); err != nil {
					t.Fatal(err)
				}
				checkReferenced(t, f.machine, readState(t, root))
			}
		})
	}
}

func checkReferenced(t *testing.T, st *store.Store, s *State) {
	t.Helper()
	for n, sl := range s.Slots {
		if sl == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(st.Root(), sl.Signed)); err != nil {
			t.Fatalf("slot %s: %v", n, err)
		}
		for _, im := range sl.Images {
			if _, err := image.Verify(st, im.Digest.String(), nil); err != nil {
				t.Fatalf("slot %s image %s: %v", n, im.Name, err)
			}
		}
	}
}

func waitFile(t *testing.T, p string, d time.Duration) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s did not appear in %v", p, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A writer of the slot record killed at random moments leaves a record
// that reads and checks: one of the states it wrote, never a torn one.
func TestWriteKilled(t *testing.T) {
	root := t.TempDir()
	if err := Write(root, oneSlot()); err != nil {
		t.Fatal(err)
	}
	last := int64(0)
	for i := 0; i < 8; i++ {
		cmd := helper(t, "VESSEL_UPDATE_HELPER=write", "MACHINE="+root)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		s, exists, err := Read(root)
		if err != nil || !exists {
			t.Fatalf("kill %d: %v (exists %v)", i, err, exists)
		}
		v := s.Slots[SlotA].Version
		if len(s.Slots[SlotA].Signed) != int(v%4096)+1 {
			t.Fatalf("kill %d: version %d with a record of another write", i, v)
		}
		last = v
	}
	if last < 2 {
		t.Fatalf("the writer never got past its first write (%d): the test proves nothing", last)
	}
	t.Logf("last version written before a kill: %d", last)
}
