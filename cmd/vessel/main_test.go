package main

import (
	"fmt"
	"os"
	"path/filepath"
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
// [root] needs euid 0, [registry] is false here (TestRegistryScript runs
// those stories), [exec:NAME] needs NAME on PATH (built into testscript),
// [exists:PATH] needs the file PATH; any other condition is an error.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			e.Setenv("VESSEL_ROOT", e.WorkDir+"/store")
			e.Setenv("VESSEL_RUN", e.WorkDir+"/run")
			e.Defer(cleanupRun(e.WorkDir + "/run"))
			e.Setenv("SOURCE_DATE_EPOCH", "1700000000")
			examples, err := filepath.Abs("../../examples") // stories run the README's examples as written
			if err != nil {
				return err
			}
			e.Setenv("EXAMPLES", examples)
			return nil
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			case "registry":
				return false, nil // TestRegistryScript runs those stories
			}
			if path, ok := strings.CutPrefix(cond, "exists:"); ok { // a file the script needs, e.g. a Debian package's
				_, err := os.Stat(path)
				return err == nil, nil
			}
			// A misspelt condition must not silently skip a story.
			return false, fmt.Errorf("unknown condition %q (known: root, registry, exec:NAME, exists:PATH)", cond)
		},
	})
}
