package initrd

import (
	"fmt"
	"os"
	"strings"
)

// ModuleOrder parses the initrd's module list: one absolute path per line,
// in load order; blank lines and # comments are skipped.
func ModuleOrder(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	return out
}

// loadModules loads every module of the list in order. A module the kernel
// already has is not an error. It returns how many it loaded.
func (s *Stage) loadModules() (int, error) {
	b, err := os.ReadFile(s.path(ModulesFile))
	if os.IsNotExist(err) {
		return 0, nil // an initrd without modules: all built in
	}
	if err != nil {
		return 0, fmt.Errorf("read module list: %w", err)
	}
	n := 0
	for _, p := range ModuleOrder(b) {
		loaded, err := s.sys.loadModule(s.path(p))
		if err != nil {
			return n, fmt.Errorf("load module %s: %w", p, err)
		}
		if loaded {
			n++
		}
	}
	return n, nil
}
