package userns

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var alice = User{Name: "alice", UID: 1000, GID: 1000}

func TestParseSubIDs(t *testing.T) {
	file := `# comment
alice:100000:65536
bob:165536:65536

1000:300000:10
  alice:400000:5
1001:500000:7
`
	tests := []struct {
		name string
		u    User
		want []Range
	}{
		{"name and numeric uid, in file order", alice, []Range{{100000, 65536}, {300000, 10}, {400000, 5}}},
		{"other user", User{Name: "bob", UID: 1002}, []Range{{165536, 65536}}},
		{"numeric only (no passwd entry)", User{UID: 1001}, []Range{{500000, 7}}},
		{"missing user", User{Name: "carol", UID: 1003}, nil},
		{"a name that looks like another uid does not match by number", User{Name: "x", UID: 100000}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSubIDs(strings.NewReader(file), "/etc/subuid", tt.u)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseSubIDsMalformed(t *testing.T) {
	for _, line := range []string{
		"alice:100000",
		"alice:100000:65536:9",
		":100000:65536",
		"alice:x:65536",
		"alice:100000:-1",
		"alice:4294967295:2", // past the 32-bit id space
		"alice:99999999999:1",
	} {
		t.Run(line, func(t *testing.T) {
			_, err := ParseSubIDs(strings.NewReader("bob:1:2\n"+line+"\n"), "/etc/subgid", alice)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), "/etc/subgid:2:") {
				t.Fatalf("error %q does not name the file and line", err)
			}
		})
	}
}

func TestNewPlan(t *testing.T) {
	p, err := NewPlan(alice, []Range{{100000, 65536}, {300000, 10}}, []Range{{200000, 65536}})
	if err != nil {
		t.Fatal(err)
	}
	want := &Plan{
		User: alice,
		UIDs: []IDMap{{0, 1000, 1}, {1, 100000, 65536}, {65537, 300000, 10}},
		GIDs: []IDMap{{0, 1000, 1}, {1, 200000, 65536}},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
	if got := Args(p.UIDs); strings.Join(got, " ") != "0 1000 1 1 100000 65536 65537 300000 10" {
		t.Fatalf("newuidmap args %v", got)
	}
	if Size(p.UIDs) != 65547 {
		t.Fatalf("size %d", Size(p.UIDs))
	}
}

func TestNewPlanClampsToIDSpace(t *testing.T) {
	p, err := NewPlan(alice, []Range{{1 << 31, 1<<32 - 1<<31 - 1}, {10, 5}}, []Range{{1, 1}})
	if err != nil {
		t.Fatal(err)
	}
	if n := Size(p.UIDs); n > 1<<32-1 {
		t.Fatalf("mapped %d ids, more than the id space", n)
	}
	last := p.UIDs[len(p.UIDs)-1]
	if uint64(last.ContainerID)+uint64(last.Size) > 1<<32-1 {
		t.Fatalf("last extent %+v reaches the invalid id", last)
	}
}

func TestNewPlanNoSubIDs(t *testing.T) {
	for _, tt := range []struct {
		name       string
		uids, gids []Range
		mention    string
	}{
		{"none", nil, nil, "uids in"},
		{"no gids", []Range{{100000, 65536}}, nil, "gids in"},
		{"zero count", []Range{{100000, 0}}, []Range{{1, 1}}, "uids in"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPlan(alice, tt.uids, tt.gids)
			if !errors.Is(err, ErrNoSubIDs) {
				t.Fatalf("err = %v, want ErrNoSubIDs", err)
			}
			var ns *NoSubIDsError
			if !errors.As(err, &ns) || ns.User != "alice" {
				t.Fatalf("err = %#v, want a NoSubIDsError for alice", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tt.mention) || !strings.Contains(msg, "user alice") {
				t.Errorf("error %q does not say %q of alice", msg, tt.mention)
			}
		})
	}
}

func TestNewPlanTooManyRanges(t *testing.T) {
	var rs []Range
	for i := 0; i < maxExtents; i++ {
		rs = append(rs, Range{uint32(100000 + i*10), 10})
	}
	if _, err := NewPlan(alice, rs, rs); err == nil || !strings.Contains(err.Error(), "merge") {
		t.Fatalf("err = %v, want too many ranges", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	oldU, oldG := SubUIDFile, SubGIDFile
	t.Cleanup(func() { SubUIDFile, SubGIDFile = oldU, oldG })
	SubUIDFile, SubGIDFile = filepath.Join(dir, "subuid"), filepath.Join(dir, "subgid")
	if _, err := Load(alice); !errors.Is(err, ErrNoSubIDs) {
		t.Fatalf("missing files: err = %v, want ErrNoSubIDs", err)
	}
	os.WriteFile(SubUIDFile, []byte("alice:100000:65536\n"), 0o644)
	os.WriteFile(SubGIDFile, []byte("1000:200000:65536\n"), 0o644)
	p, err := Load(alice)
	if err != nil {
		t.Fatal(err)
	}
	if p.GIDs[1] != (IDMap{1, 200000, 65536}) {
		t.Fatalf("gid map %v", p.GIDs)
	}
	os.WriteFile(SubGIDFile, []byte("garbage\n"), 0o644)
	if _, err := Load(alice); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v, want ErrMalformed", err)
	}
}

func TestCheckSysctls(t *testing.T) {
	read := func(vals map[string]string) func(string) (string, error) {
		return func(p string) (string, error) {
			v, ok := vals[p]
			if !ok {
				return "", os.ErrNotExist
			}
			return v, nil
		}
	}
	if err := CheckSysctls(read(map[string]string{"/proc/sys/user/max_user_namespaces": "96365"})); err != nil {
		t.Fatalf("allowed: %v", err)
	}
	for path, fix := range map[string]string{
		"/proc/sys/kernel/unprivileged_userns_clone":             "kernel.unprivileged_userns_clone=1",
		"/proc/sys/user/max_user_namespaces":                     "user.max_user_namespaces=",
		"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "apparmor_restrict_unprivileged_userns=0",
	} {
		bad := "0"
		if strings.Contains(path, "apparmor") {
			bad = "1"
		}
		err := CheckSysctls(read(map[string]string{path: bad}))
		if !errors.Is(err, ErrDisabled) || !strings.Contains(err.Error(), fix) {
			t.Errorf("%s=%s: err = %v, want ErrDisabled naming %s", path, bad, err, fix)
		}
	}
}
