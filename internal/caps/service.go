package caps

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vesselos/vessel/internal/manifest"
)

// ServiceRun turns a system.yaml service into what VesselRunner needs: the
// image, the command (the service's command and args; empty: the image's)
// and vessel run flags for its environment, user, network, read-only root
// and volumes. Each named volume becomes a fresh directory under volDir:
// learning never touches a machine's real data. Ports need nothing: the
// container binds its own ports the same way.
func ServiceRun(s manifest.ServiceSpec, volDir string) (image string, args, flags []string, err error) {
	if s.Image == "" {
		return "", nil, nil, fmt.Errorf("service %s has no image", s.Name)
	}
	args = append(append(args, s.Command...), s.Args...)
	keys := make([]string, 0, len(s.Env))
	for k := range s.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		flags = append(flags, "-e", k+"="+s.Env[k])
	}
	if s.User != "" {
		flags = append(flags, "--user", s.User)
	}
	switch s.Network {
	case "host":
		flags = append(flags, "--network", "host")
	case "", "none", "private":
		// vessel run's default: an own network namespace
	default:
		return "", nil, nil, fmt.Errorf("service %s: network %q: want none, private or host", s.Name, s.Network)
	}
	if s.ReadOnly {
		flags = append(flags, "--read-only")
	}
	for _, v := range s.Volumes {
		name, path, ok := strings.Cut(v, ":")
		if !ok || name == "" || !strings.HasPrefix(path, "/") || strings.ContainsAny(name, "/.") {
			return "", nil, nil, fmt.Errorf("service %s: volume %q: want NAME:/path", s.Name, v)
		}
		flags = append(flags, "-v", filepath.Join(volDir, name)+":"+path)
	}
	return s.Image, args, flags, nil
}

// Volumes returns the names of the service's volumes.
func Volumes(s manifest.ServiceSpec) []string {
	var out []string
	for _, v := range s.Volumes {
		name, _, _ := strings.Cut(v, ":")
		out = append(out, name)
	}
	return out
}
