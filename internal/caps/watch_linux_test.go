package caps

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestServiceHint(t *testing.T) {
	refused := []Check{
		{Cap: "CAP_NET_RAW", Syscall: "socket", Comm: "ping", Count: 1},
		{Cap: "CAP_CHOWN", Syscall: "fchownat", Comm: "chown", Count: 2},
		{Cap: "CAP_NET_RAW", Syscall: "setsockopt", Comm: "ping", Count: 1},
	}
	for _, tc := range []struct {
		have []string
		want string
	}{
		{[]string{}, "grant it (capabilities: [CHOWN, NET_RAW] in system.yaml)"},
		{[]string{"CAP_SETUID", "CAP_NET_RAW"}, "grant it (capabilities: [CHOWN, SETUID, NET_RAW] in system.yaml)"},
		{nil, "grant it (it has the runtime's default set: list what it needs in its capabilities: in system.yaml, NET_RAW, CHOWN included)"},
	} {
		got := ServiceHint(refused, tc.have)
		if !strings.Contains(got, tc.want) ||
			!strings.HasPrefix(got, "the container was refused CAP_NET_RAW (socket by ping, 1x), CAP_CHOWN (fchownat by chown, 2x), CAP_NET_RAW (setsockopt by ping, 1x); ") {
			t.Errorf("have %v:\n%s\nwant it to contain %q", tc.have, got, tc.want)
		}
	}
	if h := ServiceHint(nil, []string{"CAP_CHOWN"}); h != "" {
		t.Errorf("nothing refused: %q", h)
	}
	if got := Hint(refused[:1]); !strings.Contains(got, "grant it (--cap-add NET_RAW, or capabilities: in system.yaml)") {
		t.Errorf("Hint: %s", got)
	}
}

// A watch cgroup of a vessel that is gone is removed by the next watch;
// one of a live process, and one with a process in it, are kept.
func TestSweepWatches(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making cgroups needs root (CI runs as root)")
	}
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(mnt, fmt.Sprintf("vessel-watch-%d-sweeptest", dead.Process.Pid))
	alive := filepath.Join(mnt, fmt.Sprintf("vessel-watch-%d-sweeptest", os.Getpid()))
	busy := filepath.Join(mnt, fmt.Sprintf("vessel-watch-%d-sweepbusy", dead.Process.Pid+1000000))
	for _, d := range []string{gone, filepath.Join(gone, "svc-web"), alive, busy} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, d := range []string{filepath.Join(gone, "svc-web"), gone, alive, busy} {
			syscall.Rmdir(d)
		}
	}()
	// A process in busy: rmdir must fail, so the sweep keeps it.
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	if err := os.WriteFile(filepath.Join(busy, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0); err != nil {
		t.Skipf("cannot move a process into a cgroup here: %v", err)
	}
	sweepWatches()
	if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cgroup of a dead vessel is still there: %v", err)
	}
	for _, d := range []string{alive, busy} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}
