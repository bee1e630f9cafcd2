package ociruntime

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// pretendUserNS makes Spec believe vessel runs rootless, in a user
// namespace, for the rest of the test.
func pretendUserNS(t *testing.T) {
	old := inUserNS
	inUserNS = func() bool { return true }
	t.Cleanup(func() { inUserNS = old })
}

func TestSpecInUserNS(t *testing.T) {
	root := mustSpec(t, Config{})
	if root.Linux.CgroupsPath == "" || root.Linux.Resources == nil {
		t.Fatal("a root spec should have a cgroup path and a device rule")
	}
	pretendUserNS(t)
	for _, network := range []string{NetworkNone, NetworkHost} {
		s := mustSpec(t, Config{Network: network})
		if s.Linux.CgroupsPath != "" {
			t.Errorf("%s: cgroup path %q: runc's rootless cgroup manager only skips cgroups it cannot create when no path is given", network, s.Linux.CgroupsPath)
		}
		if s.Linux.Resources != nil {
			t.Errorf("%s: resources %+v: no cgroup writes rootless", network, s.Linux.Resources)
		}
		mounts := map[string]specs.Mount{}
		for _, m := range s.Mounts {
			mounts[m.Destination] = m
		}
		if network == NetworkHost {
			if m := mounts["/sys"]; m.Type != "bind" || m.Source != "/sys" || !slices.Contains(m.Options, "rro") {
				t.Errorf("host network: /sys is %+v, want a read-only rbind of the host's", m)
			}
			if m, ok := mounts["/sys/fs/cgroup"]; ok {
				t.Errorf("host network: /sys/fs/cgroup %+v on top of the /sys rbind", m)
			}
		} else {
			if m := mounts["/sys"]; m.Type != "sysfs" {
				t.Errorf("own network: /sys is %+v, want sysfs", m)
			}
			if m := mounts["/sys/fs/cgroup"]; m.Type != "bind" || m.Source != "/sys/fs/cgroup" {
				t.Errorf("/sys/fs/cgroup is %+v, want a read-only rbind of the host's", m)
			}
		}
		if got := mounts["/proc"].Type; got != "proc" {
			t.Errorf("%s: /proc type %q", network, got)
		}
		if len(s.Linux.Devices) != 0 {
			t.Errorf("%s: device nodes %v: the runtime bind-mounts them in a user namespace", network, s.Linux.Devices)
		}
	}
	// The rest is what a root container gets.
	s := mustSpec(t, Config{})
	if len(s.Process.Capabilities.Bounding) != len(root.Process.Capabilities.Bounding) || !s.Process.NoNewPrivileges {
		t.Error("capabilities or no_new_privs differ from a root spec")
	}
}
