// Package userns lets an unprivileged user run vessel's privileged
// pipeline (mount layers, stack an overlay, run an OCI runtime, build
// layers) inside a user namespace, with the user's subordinate ids mapped
// the way podman and buildah map them (the libsubid model):
//
//	inside        outside
//	0             the user's own uid (gid)
//	1 .. N        the user's subordinate ranges from /etc/subuid (/etc/subgid),
//	              in file order, packed one after the other
//
// So a file the user owns on the host is owned by root inside, and a file
// owned by uid 1000 inside is owned by SUBUID_START+999 outside. Tools run
// inside (mksquashfs, squashfuse, runc) see in-namespace ids only: a layer
// built rootless stores root-owned files as 0, exactly as a root build does,
// so the two produce the same digests.
//
// The package is split like the rest of vessel: the id map is computed as
// data (Load, NewPlan, ParseSubIDs, CheckSysctls) and unit-tested without
// root; Reexec, in one Linux file, applies it: it runs this program again in
// new user, mount and pid namespaces, maps the ids with newuidmap and
// newgidmap, and returns the child's exit code. Commands that need the
// namespace (vessel run, vessel build) call Reexec first; inside, Inside
// reports true and the command carries on as root-in-namespace.
package userns

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// Errors callers can branch on. Each comes back wrapped in a message that
// says how to fix it.
var (
	// ErrNoSubIDs: the user has no subordinate uids or gids.
	ErrNoSubIDs = errors.New("no subordinate ids")
	// ErrDisabled: the kernel does not let unprivileged users create user
	// namespaces.
	ErrDisabled = errors.New("unprivileged user namespaces are disabled")
	// ErrNoHelper: newuidmap or newgidmap (package uidmap) is missing.
	ErrNoHelper = errors.New("newuidmap/newgidmap not found")
	// ErrMalformed: a line of /etc/subuid or /etc/subgid is not NAME:START:COUNT.
	ErrMalformed = errors.New("malformed subordinate id entry")
)

// Files are the subordinate id files Load reads.
var (
	SubUIDFile = "/etc/subuid"
	SubGIDFile = "/etc/subgid"
)

// User is the user whose ids are mapped.
type User struct {
	Name     string // login name; may be empty when the uid has no passwd entry
	UID, GID uint32
}

// CurrentUser is the calling process's real user.
func CurrentUser() User {
	u := User{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	if pw, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
		u.Name = pw.Username
	}
	return u
}

// Range is one subordinate id range: Count ids starting at Start.
type Range struct {
	Start, Count uint32
}

// IDMap is one line of /proc/PID/uid_map (or gid_map): Size ids starting at
// ContainerID inside map to Size ids starting at HostID outside. The field
// names follow the OCI runtime spec's LinuxIDMapping.
type IDMap struct {
	ContainerID uint32 `json:"containerID"`
	HostID      uint32 `json:"hostID"`
	Size        uint32 `json:"size"`
}

// Plan is the id mapping of the namespace Reexec creates, as data.
type Plan struct {
	User User    `json:"user"`
	UIDs []IDMap `json:"uidMappings"`
	GIDs []IDMap `json:"gidMappings"`
}

// maxExtents is the kernel's limit on lines in uid_map and gid_map.
const maxExtents = 340

// NoSubIDsError is ErrNoSubIDs for one user (errors.Is matches it): the
// fix is to give User subordinate ids in /etc/subuid and /etc/subgid
// (usermod does, as root).
type NoSubIDsError struct {
	User    string   // name, or uid when the user has no name
	Missing []string // "uids in /etc/subuid", "gids in /etc/subgid"
}

func (e *NoSubIDsError) Error() string {
	return fmt.Sprintf("%v: user %s has no subordinate %s", ErrNoSubIDs, e.User, strings.Join(e.Missing, " and no subordinate "))
}

func (e *NoSubIDsError) Unwrap() error { return ErrNoSubIDs }

// NewPlan maps the user's own uid and gid to 0 and their subordinate
// ranges from 1 up, in order. It fails with ErrNoSubIDs when either list
// is empty: a namespace with a single id cannot hold an image whose files
// belong to other users, nor run a container as another user.
func NewPlan(u User, subuids, subgids []Range) (*Plan, error) {
	who := u.Name
	if who == "" {
		who = strconv.FormatUint(uint64(u.UID), 10)
	}
	var missing []string
	if total(subuids) == 0 {
		missing = append(missing, "uids in "+SubUIDFile)
	}
	if total(subgids) == 0 {
		missing = append(missing, "gids in "+SubGIDFile)
	}
	if len(missing) > 0 {
		return nil, &NoSubIDsError{User: who, Missing: missing}
	}
	uids, err := pack(u.UID, subuids, "uid", who)
	if err != nil {
		return nil, err
	}
	gids, err := pack(u.GID, subgids, "gid", who)
	if err != nil {
		return nil, err
	}
	return &Plan{User: u, UIDs: uids, GIDs: gids}, nil
}

func total(rs []Range) uint64 {
	var n uint64
	for _, r := range rs {
		n += uint64(r.Count)
	}
	return n
}

func pack(own uint32, rs []Range, kind, who string) ([]IDMap, error) {
	m := []IDMap{{ContainerID: 0, HostID: own, Size: 1}}
	next := uint64(1)
	for _, r := range rs {
		if r.Count == 0 {
			continue
		}
		if len(m) == maxExtents {
			return nil, fmt.Errorf("user %s has more than %d subordinate %s ranges, more than the kernel maps; merge them", who, maxExtents-1, kind)
		}
		count := uint64(r.Count)
		if next+count > 1<<32-1 { // 4294967295 is the invalid id
			count = 1<<32 - 1 - next
		}
		if count == 0 {
			break
		}
		m = append(m, IDMap{ContainerID: uint32(next), HostID: r.Start, Size: uint32(count)})
		next += count
	}
	return m, nil
}

// Size is the number of ids mapped (the same for uids and gids is not
// required).
func Size(m []IDMap) uint64 {
	var n uint64
	for _, e := range m {
		n += uint64(e.Size)
	}
	return n
}

// Args is the argument list newuidmap or newgidmap takes for m after the
// pid: "INSIDE OUTSIDE COUNT" triples.
func Args(m []IDMap) []string {
	var a []string
	for _, e := range m {
		a = append(a, strconv.FormatUint(uint64(e.ContainerID), 10), strconv.FormatUint(uint64(e.HostID), 10), strconv.FormatUint(uint64(e.Size), 10))
	}
	return a
}

// ParseSubIDs returns u's ranges from a subuid or subgid file (name is used
// in errors). An entry belongs to u when its first field is u's login name
// or u's numeric uid (subgid entries too are keyed by user, as in shadow).
// Blank lines and lines starting with '#' are skipped; any other line that
// is not NAME:START:COUNT with decimal numbers is an error naming the file
// and line, since newuidmap would reject a mapping built around it.
func ParseSubIDs(r io.Reader, name string, u User) ([]Range, error) {
	es, err := ParseEntries(r, name)
	if err != nil {
		return nil, err
	}
	uid := strconv.FormatUint(uint64(u.UID), 10)
	var rs []Range
	for _, e := range es {
		if e.Name == uid || (u.Name != "" && e.Name == u.Name) {
			rs = append(rs, e.Range)
		}
	}
	return rs, nil
}

// Load computes the plan for u from SubUIDFile and SubGIDFile. A missing
// file counts as empty (so the error is ErrNoSubIDs, with the fix).
func Load(u User) (*Plan, error) {
	uids, err := parseFile(SubUIDFile, u)
	if err != nil {
		return nil, err
	}
	gids, err := parseFile(SubGIDFile, u)
	if err != nil {
		return nil, err
	}
	return NewPlan(u, uids, gids)
}

func parseFile(path string, u User) ([]Range, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseSubIDs(f, path, u)
}

// Sysctl is one kernel setting that can forbid unprivileged user namespaces.
type sysctl struct {
	path, bad, fix string
}

var sysctls = []sysctl{
	{"/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"},
	{"/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=28633"},
	{"/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile for vessel)"},
}

// CheckSysctls reports ErrDisabled, with the setting to change, when a
// kernel setting read through read (a path to its trimmed value; an error
// means the setting does not exist) forbids unprivileged user namespaces.
func CheckSysctls(read func(path string) (string, error)) error {
	for _, s := range sysctls {
		v, err := read(s.path)
		if err != nil || v != s.bad {
			continue
		}
		return fmt.Errorf("%w: %s is %s; as root, run\n\t%s\n(add it to /etc/sysctl.d/ to keep it) and try again", ErrDisabled, s.path, v, s.fix)
	}
	return nil
}

// ReadSysctl reads a /proc/sys file for CheckSysctls.
func ReadSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}
