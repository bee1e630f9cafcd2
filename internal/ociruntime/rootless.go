package ociruntime

import (
	"os"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// inUserNS reports whether vessel itself runs in a user namespace (its
// uid_map is not the identity map of the initial namespace), as it does
// rootless (package userns). A variable so tests can pretend.
var inUserNS = func() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
}

// InUserNS reports whether specs made now are made for a runtime running
// as root inside a user namespace (see forUserNS).
func InUserNS() bool { return inUserNS() }

// forUserNS adapts s for a runtime that runs as root in a user namespace
// vessel is already in (rootless vessel), which can neither create cgroups
// nor create device nodes:
//   - no cgroup path and no cgroup resources (the device rule): runc,
//     finding itself root in a user namespace, uses its rootless cgroup
//     manager, which skips a cgroup it may not create only when the spec
//     names no path, and leaves the container in vessel's own cgroup;
//   - /sys/fs/cgroup is a read-only rbind of the host's hierarchy, as the
//     runtime cannot make a cgroup namespace view of a cgroup it did not
//     create; with the host network, /sys itself is a read-only rbind of
//     the host's (sysfs needs a network namespace of the user namespace's
//     own), as `runc spec --rootless` makes it;
//   - devices are bind-mounted from the host by the runtime itself (runc
//     and crun do that when they find themselves in a user namespace).
//
// A user namespace of the container's own (Config.UIDMappings) is kept:
// it nests inside vessel's.
func forUserNS(s *specs.Spec) {
	s.Linux.CgroupsPath = ""
	s.Linux.Resources = nil
	ownNet := false
	for _, ns := range s.Linux.Namespaces {
		ownNet = ownNet || ns.Type == specs.NetworkNamespace
	}
	var mounts []specs.Mount
	for _, m := range s.Mounts {
		switch {
		case m.Destination == "/sys" && m.Type == "sysfs" && !ownNet:
			// sysfs needs a network namespace the user namespace owns;
			// the host's is not. A read-only rbind of the host's /sys
			// (which brings /sys/fs/cgroup along) replaces both.
			m = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "rro"}}
		case m.Destination == "/sys/fs/cgroup" && m.Type == "cgroup" && !ownNet:
			continue
		case m.Destination == "/sys/fs/cgroup" && m.Type == "cgroup":
			m = specs.Mount{Destination: "/sys/fs/cgroup", Type: "bind", Source: "/sys/fs/cgroup", Options: []string{"rbind", "nosuid", "noexec", "nodev", "rro"}}
		}
		mounts = append(mounts, m)
	}
	s.Mounts = mounts
}
