package main

import (
	"go/build"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/vesselos/vessel"

// notInCLI are packages the CLI must not import directly: it parses flags,
// makes one library call and prints (as go-containerregistry's depcheck
// test keeps its commands thin). Processes, syscalls, mounts and runtime
// internals belong to the library packages that own them.
var notInCLI = map[string]string{
	"os/exec":               "starting processes (runtimes, tools) is a library package's job",
	"golang.org/x/sys/unix": "mounts, ioctls and other syscalls belong to internal/mount, internal/ociruntime, internal/userns",
	"github.com/opencontainers/runtime-spec/specs-go": "runtime bundles are internal/ociruntime's",
	module + "/internal/proc":                         "process identity is internal/container's and internal/mount's business",
	module + "/internal/faultpoint":                   "crash-test hooks live in the library",
	module + "/internal/atomicfile":                   "state files are written by the package that owns them",
	module + "/internal/registry/registrytest":        "test helpers",
	module + "/internal/userns/usernstest":            "test helpers",
	module + "/internal/image/imagetest":              "test helpers",
	module + "/internal/trust/trusttest":              "test helpers",
}

// The CLI imports none of notInCLI, and no internal package imports the
// CLI or (outside its tests) a test helper package.
func TestDependencies(t *testing.T) {
	p, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range p.Imports {
		if why, bad := notInCLI[imp]; bad {
			t.Errorf("cmd/vessel imports %s: %s", imp, why)
		}
	}
	if len(p.Imports) == 0 {
		t.Fatal("no imports found: the check looked at nothing")
	}
	checked := 0
	err = filepath.WalkDir("../../internal", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		ip, err := build.ImportDir(path, 0)
		if _, ok := err.(*build.NoGoError); ok {
			return nil
		}
		if err != nil {
			return err
		}
		checked++
		name := module + strings.TrimPrefix(filepath.ToSlash(path), "../..")
		all := append(append(append([]string(nil), ip.Imports...), ip.TestImports...), ip.XTestImports...)
		for _, imp := range all {
			if strings.HasPrefix(imp, module+"/cmd") {
				t.Errorf("%s imports %s: the library must not depend on the CLI", name, imp)
			}
		}
		for _, imp := range ip.Imports {
			if isTestHelper(imp) && strings.HasPrefix(imp, module+"/") && !isTestHelper(name) {
				t.Errorf("%s imports the test helper %s outside its tests", name, imp)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("only %d internal packages checked", checked)
	}
}

// isTestHelper reports whether a package is a test helper: X/Xtest
// (registry/registrytest, attest/attesttest; not attest itself) or the VM
// harness.
func isTestHelper(pkg string) bool {
	return path.Base(pkg) == path.Base(path.Dir(pkg))+"test" || path.Base(pkg) == "vmtest"
}
