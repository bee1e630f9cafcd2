package userns

// Per-service user namespaces (issue 21): every service that asks for one
// gets a range of host ids of its own, allocated the way shadow's libsubid
// hands out subordinate ids, from the ranges /etc/subuid and /etc/subgid
// delegate to the user DelegateUser. The allocation is a record under the
// store root (userns.json), read and rewritten atomically under a lock
// (userns.lock), so concurrent `vessel up` of two products never hand out
// the same ids and a crash leaves the old or the new record, never half of
// one. A range is kept across restarts and reboots and freed only when its
// service (or the last service of its group) leaves the product's manifest.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
)

// DelegateUser is the user whose /etc/subuid and /etc/subgid ranges vessel
// allocates service ranges from.
const DelegateUser = "vessel"

// RangeSize is the number of ids a service's namespace maps: 0..65535
// inside, as image layers own.
const RangeSize = 65536

// ErrNotDelegated: no subordinate ids are delegated to vessel, or all of
// them are taken.
var ErrNotDelegated = errors.New("no subordinate ids delegated to vessel")

// ErrOverlap: vessel's delegated range overlaps another user's.
var ErrOverlap = errors.New("subordinate id ranges overlap")

// Record file names under Allocator.Dir.
const (
	RecordName = "userns.json"
	lockName   = "userns.lock"
)

// Allocator allocates service id ranges. The zero value of every field but
// Dir takes its default.
type Allocator struct {
	Dir        string // where the record lives (the store root)
	SubUIDFile string // default SubUIDFile (/etc/subuid)
	SubGIDFile string // default SubGIDFile (/etc/subgid)
	User       string // default DelegateUser
	Size       uint32 // default RangeSize
}

// Want is one service asking for a namespace: Mode is "auto" or
// "group:NAME" (manifest.UserNSAuto, manifest.UserNSGroupPrefix).
type Want struct {
	Service string
	Mode    string
}

// Assignment is one allocated range: the uids and gids of one service
// (Owner "service:NAME") or of a group (Owner "group:NAME") of a product.
type Assignment struct {
	Product   string    `json:"product"`
	Owner     string    `json:"owner"`
	Services  []string  `json:"services"`
	UID       Range     `json:"uid"`
	GID       Range     `json:"gid"`
	Allocated time.Time `json:"allocated"`
}

// UIDMap and GIDMap are the namespace's maps: 0.. inside to the range.
func (a Assignment) UIDMap() []IDMap {
	return []IDMap{{ContainerID: 0, HostID: a.UID.Start, Size: a.UID.Count}}
}

// GIDMap: see UIDMap.
func (a Assignment) GIDMap() []IDMap {
	return []IDMap{{ContainerID: 0, HostID: a.GID.Start, Size: a.GID.Count}}
}

type recordFile struct {
	Version     int          `json:"version"`
	Assignments []Assignment `json:"assignments"`
}

func (a *Allocator) files() (uidf, gidf, user string, size uint32) {
	uidf, gidf, user, size = a.SubUIDFile, a.SubGIDFile, a.User, a.Size
	if uidf == "" {
		uidf = SubUIDFile
	}
	if gidf == "" {
		gidf = SubGIDFile
	}
	if user == "" {
		user = DelegateUser
	}
	if size == 0 {
		size = RangeSize
	}
	return
}

// ownerKey is the record key a want maps to.
func ownerKey(w Want) (string, error) {
	switch {
	case w.Mode == "auto":
		return "service:" + w.Service, nil
	case strings.HasPrefix(w.Mode, "group:") && len(w.Mode) > len("group:"):
		return w.Mode, nil
	}
	return "", fmt.Errorf("service %s: userns %q: want auto or group:NAME", w.Service, w.Mode)
}

// Sync makes the record match product's manifest: every want gets its
// range (kept when it has one, allocated otherwise), and the product's
// ranges nobody wants any more are freed. It returns the assignment of
// each wanting service and the freed ones. With no wants it only frees,
// and needs no delegation.
func (a *Allocator) Sync(product string, wants []Want) (map[string]Assignment, []Assignment, error) {
	if product == "" {
		return nil, nil, errors.New("user namespaces: empty product name")
	}
	if len(wants) == 0 && a.Dir != "" {
		// Nothing to allocate and no record: nothing to free either, and
		// no need to write to the store root (it may be read-only).
		if _, err := os.Stat(filepath.Join(a.Dir, RecordName)); errors.Is(err, os.ErrNotExist) {
			return map[string]Assignment{}, nil, nil
		}
	}
	unlock, err := a.lock()
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	rec, err := a.read()
	if err != nil {
		return nil, nil, err
	}
	before, _ := json.Marshal(rec)
	byOwner := map[string][]string{}
	var order []string
	for _, w := range wants {
		k, err := ownerKey(w)
		if err != nil {
			return nil, nil, err
		}
		if _, ok := byOwner[k]; !ok {
			order = append(order, k)
		}
		byOwner[k] = append(byOwner[k], w.Service)
	}
	var kept, freed []Assignment
	have := map[string]int{}
	for _, as := range rec.Assignments {
		if as.Product == product {
			if svcs, ok := byOwner[as.Owner]; ok {
				as.Services = slices.Clone(svcs)
				sort.Strings(as.Services)
				have[as.Owner] = len(kept)
			} else {
				freed = append(freed, as)
				continue
			}
		}
		kept = append(kept, as)
	}
	if len(wants) > 0 {
		uidf, gidf, user, size := a.files()
		uidPool, err := delegated(uidf, user)
		if err != nil {
			return nil, nil, err
		}
		gidPool, err := delegated(gidf, user)
		if err != nil {
			return nil, nil, err
		}
		if len(uidPool) == 0 || len(gidPool) == 0 {
			return nil, nil, notDelegated(user, uidf, gidf, size)
		}
		// What the product keeps must still be delegated.
		for _, as := range kept {
			if as.Product != product {
				continue
			}
			if !inside(as.UID, uidPool) || !inside(as.GID, gidPool) {
				return nil, nil, fmt.Errorf("product %s %s: its ids (uids %s, gids %s) are no longer delegated to %s in %s and %s; give them back to %s there, or remove the service from the manifest to free them",
					product, as.Owner, fmtRange(as.UID), fmtRange(as.GID), user, uidf, gidf, user)
			}
		}
		for _, k := range order {
			if _, ok := have[k]; ok {
				continue
			}
			var usedU, usedG []Range
			for _, as := range kept {
				usedU, usedG = append(usedU, as.UID), append(usedG, as.GID)
			}
			u, ok1 := firstFit(uidPool, usedU, size)
			g, ok2 := firstFit(gidPool, usedG, size)
			if !ok1 || !ok2 {
				return nil, nil, fmt.Errorf("%w: every range of %d ids delegated to %s in %s and %s is taken (%d allocated); delegate more ids, e.g. a second line %s",
					ErrNotDelegated, size, user, uidf, gidf, len(kept), suggestLine(user, uidf, gidf, size))
			}
			svcs := slices.Clone(byOwner[k])
			sort.Strings(svcs)
			kept = append(kept, Assignment{Product: product, Owner: k, Services: svcs, UID: u, GID: g, Allocated: time.Now().UTC()})
		}
	}
	rec.Assignments = kept
	if after, _ := json.Marshal(rec); !bytes.Equal(before, after) {
		if err := a.write(rec); err != nil {
			return nil, nil, err
		}
	}
	out := map[string]Assignment{}
	for _, as := range kept {
		if as.Product != product {
			continue
		}
		for _, s := range as.Services {
			out[s] = as
		}
	}
	return out, freed, nil
}

// List returns every allocated range, by product and owner.
func (a *Allocator) List() ([]Assignment, error) {
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := a.read()
	if err != nil {
		return nil, err
	}
	out := rec.Assignments
	sort.Slice(out, func(i, j int) bool {
		if out[i].Product != out[j].Product {
			return out[i].Product < out[j].Product
		}
		return out[i].Owner < out[j].Owner
	})
	return out, nil
}

func (a *Allocator) lock() (func(), error) {
	if a.Dir == "" {
		return nil, errors.New("user namespaces: no record directory")
	}
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("user namespace record: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(a.Dir, lockName), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("user namespace record lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("user namespace record lock: %w", err)
	}
	return func() { f.Close() }, nil
}

func (a *Allocator) read() (*recordFile, error) {
	p := filepath.Join(a.Dir, RecordName)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return &recordFile{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read user namespace record: %w", err)
	}
	var rec recordFile
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("user namespace record %s is damaged (%v); it says which ids services own, so repair it by hand rather than deleting it", p, err)
	}
	if rec.Version != 1 {
		return nil, fmt.Errorf("user namespace record %s: version %d is not supported (want 1)", p, rec.Version)
	}
	return &rec, nil
}

func (a *Allocator) write(rec *recordFile) error {
	if rec.Assignments == nil {
		rec.Assignments = []Assignment{}
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(a.Dir, RecordName), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write user namespace record: %w", err)
	}
	return nil
}

// Entry is one line of a subordinate id file.
type Entry struct {
	Name  string
	Line  int
	Range Range
}

// ParseEntries returns every entry of a subuid or subgid file (name is
// used in errors), with the rules of ParseSubIDs.
func ParseEntries(r io.Reader, name string) ([]Entry, error) {
	var es []Entry
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 || f[0] == "" {
			return nil, fmt.Errorf("%s:%d: %w: %q is not NAME:START:COUNT", name, n, ErrMalformed, line)
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || start+count > 1<<32 {
			return nil, fmt.Errorf("%s:%d: %w: %q: START and COUNT must be decimal and fit in 32 bits", name, n, ErrMalformed, line)
		}
		es = append(es, Entry{Name: f[0], Line: n, Range: Range{Start: uint32(start), Count: uint32(count)}})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return es, nil
}

func readEntries(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseEntries(f, path)
}

// delegated returns user's ranges in path, refusing any that overlaps
// another user's (the ids would not be the service's alone). A user
// entry keyed by uid is not recognised: vessel's delegation is by name.
func delegated(path, user string) ([]Range, error) {
	es, err := readEntries(path)
	if err != nil {
		return nil, err
	}
	var pool []Range
	for _, e := range es {
		if e.Name != user || e.Range.Count == 0 {
			continue
		}
		for _, o := range es {
			if o.Name != user && o.Range.Count > 0 && overlaps(e.Range, o.Range) {
				return nil, fmt.Errorf("%w: %s:%d delegates %s to %s, but %s:%d gives %s to %s; vessel refuses ids another user can map: move one of the ranges",
					ErrOverlap, path, e.Line, fmtRange(e.Range), user, path, o.Line, fmtRange(o.Range), o.Name)
			}
		}
		pool = append(pool, e.Range)
	}
	return pool, nil
}

func end(r Range) uint64 { return uint64(r.Start) + uint64(r.Count) }

func overlaps(a, b Range) bool {
	return uint64(a.Start) < end(b) && uint64(b.Start) < end(a)
}

func inside(r Range, pool []Range) bool {
	for _, p := range pool {
		if r.Start >= p.Start && end(r) <= end(p) {
			return true
		}
	}
	return false
}

func fmtRange(r Range) string {
	return fmt.Sprintf("%d-%d", r.Start, end(r)-1)
}

// firstFit finds the lowest run of size ids in pool (in file order) that
// overlaps nothing in used.
func firstFit(pool, used []Range, size uint32) (Range, bool) {
	for _, p := range pool {
		cand := uint64(p.Start)
		for moved := true; moved && cand+uint64(size) <= end(p); {
			moved = false
			for _, u := range used {
				if cand < end(u) && uint64(u.Start) < cand+uint64(size) {
					cand, moved = end(u), true
				}
			}
		}
		if cand+uint64(size) <= end(p) {
			return Range{Start: uint32(cand), Count: size}, true
		}
	}
	return Range{}, false
}

// suggestLine proposes a delegation line past every range either file
// gives anyone, aligned to 65536, room for 16 services.
func suggestLine(user, uidf, gidf string, size uint32) string {
	top := uint64(100000)
	for _, f := range []string{uidf, gidf} {
		es, _ := readEntries(f)
		for _, e := range es {
			top = max(top, end(e.Range))
		}
	}
	start := (top + 65535) / 65536 * 65536
	count := uint64(size) * 16
	if start+count > 1<<32-1 {
		return user + ":START:" + strconv.FormatUint(count, 10) + " (with START a free range)"
	}
	return fmt.Sprintf("%s:%d:%d", user, start, count)
}

func notDelegated(user, uidf, gidf string, size uint32) error {
	line := suggestLine(user, uidf, gidf, size)
	return fmt.Errorf("%w: services with userns need subordinate ids delegated to user %q; as root, add the line\n\t%s\nto both %s and %s (any free range works: it must overlap no other user's, and holds one service per %d ids) and try again",
		ErrNotDelegated, user, line, uidf, gidf, size)
}
