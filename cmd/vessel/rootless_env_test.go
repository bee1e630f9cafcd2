package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/userns/usernstest"
)

// rootlessEnv is what the rootless CLI tests share: a throwaway
// unprivileged user with subordinate ids, a temporary directory it can
// enter, a copy of vessel it can run (this test binary, see TestMain), and
// a store and runtime directory it owns.
type rootlessEnv struct {
	u          usernstest.User
	tmp, bin   string
	store, xdg string
}

// newRootlessEnv skips the test unless the tools and files it needs are
// here and an unprivileged user can be made (root, useradd, newuidmap,
// user namespaces).
func newRootlessEnv(t *testing.T, tools []string, files ...string) *rootlessEnv {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s is missing (make deps installs it)", f)
		}
	}
	r := &rootlessEnv{u: usernstest.NewUser(t)}
	// t.TempDir is 0700 root: open the path down to it.
	r.tmp = t.TempDir()
	for d := r.tmp; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()) {
			os.Chmod(d, 0o755)
		}
	}
	r.bin = filepath.Join(r.tmp, "bin", "vessel")
	copyExe(t, r.bin)
	r.store = filepath.Join(r.tmp, "userstore")
	r.xdg = filepath.Join(r.tmp, "xdg")
	must(t, os.Mkdir(r.store, 0o755))
	must(t, os.Mkdir(r.xdg, 0o700))
	r.u.Chown(t, r.store)
	r.u.Chown(t, r.xdg)
	return r
}

// env is the user's environment for vessel.
func (r *rootlessEnv) env(extra ...string) []string {
	return append([]string{"VESSEL_ROOT=" + r.store, "XDG_RUNTIME_DIR=" + r.xdg, "SOURCE_DATE_EPOCH=1700000000"}, extra...)
}

// vessel runs vessel as the user and returns its stdout; a failure ends
// the test with stderr.
func (r *rootlessEnv) vessel(t *testing.T, args ...string) []byte {
	t.Helper()
	var o, e bytes.Buffer
	cmd := r.u.Command(r.env(), append([]string{r.bin}, args...)...)
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("rootless vessel %s: %v\n%s", strings.Join(args, " "), err, e.String())
	}
	return o.Bytes()
}

// checkClean fails the test if the user still runs processes or vessel
// left mounts under the temporary directory.
func (r *rootlessEnv) checkClean(t *testing.T, after string) {
	t.Helper()
	if pids := r.u.Pids(); len(pids) > 0 {
		t.Errorf("processes of the user still run after %s: %v", after, pids)
	}
	if m := mountsUnder(r.tmp); len(m) > 0 {
		t.Errorf("mounts left behind after %s: %v", after, m)
	}
}
