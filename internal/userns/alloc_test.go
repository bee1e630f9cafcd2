package userns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func testAllocator(t *testing.T, subuid, subgid string) *Allocator {
	t.Helper()
	d := t.TempDir()
	a := &Allocator{Dir: filepath.Join(d, "store"), SubUIDFile: filepath.Join(d, "subuid"), SubGIDFile: filepath.Join(d, "subgid")}
	if err := os.WriteFile(a.SubUIDFile, []byte(subuid), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.SubGIDFile, []byte(subgid), 0o644); err != nil {
		t.Fatal(err)
	}
	return a
}

const delegation = "alice:100000:65536\nvessel:1048576:262144\n"

func TestAllocDisjointGroupAndStable(t *testing.T) {
	a := testAllocator(t, delegation, delegation)
	got, freed, err := a.Sync("p1", []Want{{"web", "auto"}, {"db", "group:data"}, {"worker", "group:data"}, {"api", "auto"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 0 {
		t.Errorf("freed %v on first sync", freed)
	}
	if got["db"].UID != got["worker"].UID || got["db"].Owner != "group:data" {
		t.Errorf("group members got %v and %v", got["db"], got["worker"])
	}
	seen := map[uint32]string{}
	for _, s := range []string{"web", "db", "api"} {
		r := got[s].UID
		if r.Count != RangeSize || r.Start < 1048576 || end(r) > 1048576+262144 {
			t.Errorf("%s: range %v outside vessel's delegation", s, r)
		}
		if other, ok := seen[r.Start]; ok {
			t.Errorf("%s and %s share %v", s, other, r)
		}
		seen[r.Start] = s
		for _, t2 := range []string{"web", "db", "api"} {
			if t2 != s && overlaps(r, got[t2].UID) && got[t2].Owner != got[s].Owner {
				t.Errorf("%s %v overlaps %s %v", s, r, t2, got[t2].UID)
			}
		}
	}
	// A restart (a second sync, a new Allocator on the same record) keeps
	// every range.
	b := *a
	again, freed, err := b.Sync("p1", []Want{{"api", "auto"}, {"web", "auto"}, {"worker", "group:data"}, {"db", "group:data"}})
	if err != nil {
		t.Fatal(err)
	}
	for s, as := range got {
		if again[s].UID != as.UID || again[s].GID != as.GID {
			t.Errorf("%s: %v after restart, was %v", s, again[s], as)
		}
	}
	if len(freed) != 0 {
		t.Errorf("restart freed %v", freed)
	}
	// web leaves: its range is freed, the next new service gets it.
	_, freed, err = a.Sync("p1", []Want{{"api", "auto"}, {"worker", "group:data"}, {"db", "group:data"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 1 || freed[0].Owner != "service:web" {
		t.Fatalf("freed %v, want web's range", freed)
	}
	n, _, err := a.Sync("p2", []Want{{"new", "auto"}})
	if err != nil {
		t.Fatal(err)
	}
	if n["new"].UID != got["web"].UID {
		t.Errorf("new service got %v, want web's freed %v (first fit)", n["new"].UID, got["web"].UID)
	}
	list, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Product != "p1" || list[2].Product != "p2" {
		t.Errorf("list %+v", list)
	}
	// The delegation is full now (4 ranges of 65536 in 262144).
	if _, _, err := a.Sync("p3", []Want{{"x", "auto"}, {"y", "auto"}}); !errors.Is(err, ErrNotDelegated) {
		t.Errorf("sync past the delegation: %v, want ErrNotDelegated", err)
	}
	// A failed sync changes nothing.
	if l2, _ := a.List(); len(l2) != 3 {
		t.Errorf("a failed sync left %d assignments", len(l2))
	}
}

func TestAllocRefusesOverlapAndMissingDelegation(t *testing.T) {
	a := testAllocator(t, "alice:100000:65536\nvessel:150000:65536\n", delegation)
	_, _, err := a.Sync("p", []Want{{"web", "auto"}})
	if !errors.Is(err, ErrOverlap) || !strings.Contains(err.Error(), ":2 delegates 150000-215535 to vessel") || !strings.Contains(err.Error(), ":1 gives 100000-165535 to alice") {
		t.Errorf("overlap: %v", err)
	}
	b := testAllocator(t, "alice:100000:65536\n", "")
	_, _, err = b.Sync("p", []Want{{"web", "auto"}})
	if !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), "vessel:196608:1048576") {
		t.Errorf("no delegation: %v", err)
	}
	// Without wants nothing needs a delegation.
	if _, _, err := b.Sync("p", nil); err != nil {
		t.Errorf("sync with no wants: %v", err)
	}
	if _, _, err := b.Sync("p", []Want{{"web", "group:"}}); err == nil {
		t.Error("group with no name accepted")
	}
}

func TestAllocConcurrentProducts(t *testing.T) {
	a := testAllocator(t, "vessel:1000000:6553600\n", "vessel:1000000:6553600\n")
	var wg sync.WaitGroup
	res := make([]map[string]Assignment, 8)
	errs := make([]error, 8)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := *a // separate allocators, one record
			res[i], _, errs[i] = b.Sync(fmt.Sprintf("prod%d", i), []Want{{"a", "auto"}, {"b", "auto"}})
		}()
	}
	wg.Wait()
	var all []Range
	for i, r := range res {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		all = append(all, r["a"].UID, r["b"].UID)
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if overlaps(all[i], all[j]) {
				t.Errorf("ranges %v and %v overlap", all[i], all[j])
			}
		}
	}
	if l, _ := a.List(); len(l) != 16 {
		t.Errorf("%d assignments recorded, want 16", len(l))
	}
}

func TestAllocKeptRangeNoLongerDelegated(t *testing.T) {
	a := testAllocator(t, delegation, delegation)
	if _, _, err := a.Sync("p", []Want{{"web", "auto"}}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(a.SubUIDFile, []byte("vessel:5000000:65536\n"), 0o644)
	if _, _, err := a.Sync("p", []Want{{"web", "auto"}}); err == nil || !strings.Contains(err.Error(), "no longer delegated") {
		t.Errorf("range outside the delegation kept: %v", err)
	}
}

func TestFirstFit(t *testing.T) {
	pool := []Range{{Start: 0, Count: 300}}
	r, ok := firstFit(pool, []Range{{Start: 100, Count: 100}, {Start: 0, Count: 50}}, 100)
	if !ok || r.Start != 200 {
		t.Errorf("got %v %v, want 200", r, ok)
	}
	r, ok = firstFit(pool, []Range{{Start: 150, Count: 100}}, 100)
	if !ok || r.Start != 0 {
		t.Errorf("got %v %v, want 0", r, ok)
	}
	if _, ok := firstFit(pool, []Range{{Start: 90, Count: 130}}, 100); ok {
		t.Error("fit where there is no room")
	}
}

// An up with no userns services on a machine that never had any touches
// nothing (the store root may be read-only); an unchanged sync does not
// rewrite the record.
func TestAllocNoWantsWritesNothing(t *testing.T) {
	a := testAllocator(t, delegation, delegation)
	if _, _, err := a.Sync("p", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sync without wants created %s (%v)", a.Dir, err)
	}
	if _, _, err := a.Sync("p", []Want{{"web", "auto"}}); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(a.Dir, RecordName)
	_, err := os.Stat(rec)
	if err != nil {
		t.Fatal(err)
	}
	// Replace the record by a copy with another inode: an unchanged sync
	// must leave that inode in place.
	b, _ := os.ReadFile(rec)
	os.Remove(rec)
	os.WriteFile(rec, b, 0o644)
	fi2, _ := os.Stat(rec)
	if _, _, err := a.Sync("p", []Want{{"web", "auto"}}); err != nil {
		t.Fatal(err)
	}
	fi3, _ := os.Stat(rec)
	if !os.SameFile(fi2, fi3) {
		t.Error("an unchanged sync rewrote the record")
	}
}

// A damaged record is refused with a message, never replaced: it says
// which ids services' files belong to.
func TestAllocDamagedRecord(t *testing.T) {
	a := testAllocator(t, delegation, delegation)
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(a.Dir, RecordName), []byte(`{"version":1,"assignments":[{"product":`), 0o644)
	if _, _, err := a.Sync("p", []Want{{"web", "auto"}}); err == nil || !strings.Contains(err.Error(), "is damaged") {
		t.Errorf("damaged record: %v", err)
	}
	if _, err := a.List(); err == nil {
		t.Error("list of a damaged record succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(a.Dir, RecordName)); !strings.HasSuffix(string(b), `"product":`) {
		t.Errorf("damaged record was rewritten: %s", b)
	}
}
