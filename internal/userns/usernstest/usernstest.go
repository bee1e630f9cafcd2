// Package usernstest gives integration tests a throwaway unprivileged user
// with subordinate ids, to run vessel rootless as (vessel run, vessel
// build). It needs root, as CI has; elsewhere the test is skipped with the
// reason.
package usernstest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/userns"
)

// User is a throwaway user.
type User struct {
	Name     string
	UID, GID int
	SubStart int // first subordinate uid and gid
	SubCount int
}

// SubCount is how many subordinate uids and gids a throwaway user gets.
const SubCount = 65536

// NewUser creates a user with no home directory and SubCount subordinate
// uids and gids in a range no other user has, and deletes it (after
// killing any process it still runs) when the test ends. It skips the test
// when not root, when useradd, usermod, userdel, runuser, newuidmap or
// newgidmap are missing, or when unprivileged user namespaces are disabled.
func NewUser(t testing.TB) User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating a throwaway user needs root (CI runs as root)")
	}
	for _, tool := range []string{"useradd", "usermod", "userdel", "runuser", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (packages passwd, util-linux, uidmap)", tool)
		}
	}
	if err := userns.CheckSysctls(userns.ReadSysctl); err != nil {
		t.Skipf("unprivileged user namespaces are disabled here: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "vtest" + hex.EncodeToString(b)
	start := freeSubRange(t)
	run(t, "useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name)
	t.Cleanup(func() { remove(t, name) })
	r := fmt.Sprintf("%d-%d", start, start+SubCount-1)
	run(t, "usermod", "--add-subuids", r, "--add-subgids", r, name)
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return User{Name: name, UID: uid, GID: gid, SubStart: start, SubCount: SubCount}
}

// Chown gives path (recursively) to u.
func (u User) Chown(t testing.TB, path string) {
	t.Helper()
	run(t, "chown", "-R", fmt.Sprintf("%d:%d", u.UID, u.GID), path)
}

// Command runs argv as u through runuser, with exactly env as environment
// (plus a PATH when env has none).
func (u User) Command(env []string, argv ...string) *exec.Cmd {
	hasPath := false
	for _, e := range env {
		hasPath = hasPath || strings.HasPrefix(e, "PATH=")
	}
	if !hasPath {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	args := append([]string{"-u", u.Name, "--", "env", "-i"}, env...)
	return exec.Command("runuser", append(args, argv...)...)
}

// Pids lists u's processes.
func (u User) Pids() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name(), &st) == nil && int(st.Uid) == u.UID {
			pids = append(pids, pid)
		}
	}
	return pids
}

// freeSubRange picks a start above every range in /etc/subuid and
// /etc/subgid (and at least 1,000,000, clear of useradd's defaults).
func freeSubRange(t testing.TB) int {
	next := 1000000
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			p := strings.Split(sc.Text(), ":")
			if len(p) != 3 {
				continue
			}
			s, err1 := strconv.Atoi(p[1])
			c, err2 := strconv.Atoi(p[2])
			if err1 == nil && err2 == nil && s+c > next {
				next = s + c
			}
		}
		fh.Close()
	}
	return (next + SubCount - 1) / SubCount * SubCount
}

func remove(t testing.TB, name string) {
	u, err := user.Lookup(name)
	if err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		// Whatever the test started as the user and left running.
		for i := 0; i < 50; i++ {
			pids := User{UID: uid}.Pids()
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				syscall.Kill(p, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
		t.Errorf("userdel %s: %v: %s", name, err, out)
	}
}

func run(t testing.TB, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}
