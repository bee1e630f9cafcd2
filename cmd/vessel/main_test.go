package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"vessel": func() {
			if p := os.Getenv(jsonProblemsEnv); p != "" {
				checkJSON = recordJSONProblems(p)
			}
			os.Exit(run(os.Args[1:]))
		},
	})
}

// TestScript runs every user story in testdata/script/*.txtar. Conditions:
// [root] needs euid 0, [registry] and [hostile] are false here
// (TestRegistryScript and TestHostileScript run those stories), [exec:NAME] needs NAME on PATH (built into testscript),
// [exists:PATH] needs the file PATH; any other condition is an error.
func TestScript(t *testing.T) {
	jsonCheck := checkStoriesJSON(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			e.Setenv("VESSEL_ROOT", e.WorkDir+"/store")
			e.Setenv("VESSEL_RUN", e.WorkDir+"/run")
			jsonCheck(e.Setenv)
			e.Defer(cleanupRun(e.WorkDir + "/run"))
			e.Setenv("SOURCE_DATE_EPOCH", "1700000000")
			// Free TCP ports FREE_PORT and FREE_PORT+1 on 127.0.0.1 for a
			// story's server (swtpm's data and control ports, which the
			// openssl tpm2 provider's swtpm TCTI needs).
			p, err := freePortPair()
			if err != nil {
				return err
			}
			e.Setenv("FREE_PORT", strconv.Itoa(p))
			e.Setenv("FREE_PORT1", strconv.Itoa(p+1))
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
			case "hostile":
				return false, nil // TestHostileScript runs those stories
			}
			if path, ok := strings.CutPrefix(cond, "exists:"); ok { // a file the script needs, e.g. a Debian package's
				_, err := os.Stat(path)
				return err == nil, nil
			}
			// A misspelt condition must not silently skip a story.
			return false, fmt.Errorf("unknown condition %q (known: root, registry, hostile, exec:NAME, exists:PATH)", cond)
		},
	})
}

// freePortPair returns a port p such that p and p+1 were free.
func freePortPair() (int, error) {
	for try := 0; try < 100; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free pair of TCP ports on 127.0.0.1")
}
