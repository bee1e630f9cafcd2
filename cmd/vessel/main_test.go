package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"vessel": func() { os.Exit(run(os.Args[1:])) },
	})
}

// TestScript runs every user story in testdata/script/*.txtar. Conditions:
// [root] needs euid 0, [exec:NAME] needs NAME on PATH (built into testscript),
// [exists:PATH] needs the file PATH.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			e.Setenv("VESSEL_ROOT", e.WorkDir+"/store")
			e.Setenv("VESSEL_RUN", e.WorkDir+"/run")
			e.Defer(cleanupRun(e.WorkDir + "/run"))
			e.Setenv("SOURCE_DATE_EPOCH", "1700000000")
			return nil
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			}
			if path, ok := strings.CutPrefix(cond, "exists:"); ok { // a file the script needs, e.g. a Debian package's
				_, err := os.Stat(path)
				return err == nil, nil
			}
			if len(cond) > 5 && cond[:5] == "tool:" {
				_, err := exec.LookPath(cond[5:])
				return err == nil, nil
			}
			return false, nil
		},
	})
}
