package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/vesselos/vessel/internal/registry/registrytest"
)

// TestRegistryScript runs the registry and install stories
// (testdata/script/registry*.txtar, install*.txtar) each against its own
// docker-registry on a free loopback port ($REGISTRY). TestScript runs the
// same files without a registry; they skip there ([!registry]).
func TestRegistryScript(t *testing.T) {
	if !registrytest.Available() {
		t.Skipf("%s is not installed (Debian package docker-registry; run 'make deps')", registrytest.Binary)
	}
	var files []string
	for _, pat := range []string{"registry*.txtar", "install*.txtar"} {
		m, _ := filepath.Glob(filepath.Join("testdata", "script", pat))
		files = append(files, m...)
	}
	jsonCheck := checkStoriesJSON(t)
	testscript.Run(t, testscript.Params{
		Files: files,
		Setup: func(e *testscript.Env) error {
			e.Setenv("VESSEL_ROOT", e.WorkDir+"/store")
			e.Setenv("VESSEL_RUN", e.WorkDir+"/run")
			jsonCheck(e.Setenv)
			e.Defer(cleanupRun(e.WorkDir + "/run"))
			e.Setenv("SOURCE_DATE_EPOCH", "1700000000")
			d, err := registrytest.New(filepath.Join(e.WorkDir, ".registry"), registrytest.Options{})
			if err != nil {
				return err
			}
			if err := d.Start(); err != nil {
				return err
			}
			e.Defer(d.Stop)
			e.Setenv("REGISTRY", d.Host)
			return nil
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			case "registry":
				return true, nil
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
