package ociruntime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestRunUserNamespace runs in a user namespace (container root is host
// uid 100000) on both network modes: /sys is sysfs with its own netns and
// a read-only rbind on the host's.
func TestRunUserNamespace(t *testing.T) {
	r := needRunc(t)
	root := busyboxRootfs(t)
	// The mapped root (host uid 100000) must be able to reach the rootfs.
	for d := filepath.Dir(root); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	maps := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	for _, network := range []string{NetworkNone, NetworkHost} {
		t.Run(network, func(t *testing.T) {
			code, out := runOut(t, r, Config{ID: "userns", Rootfs: root, Network: network, UIDMappings: maps, GIDMappings: maps,
				// Every mount at or under /sys must be read-only (rro
				// covers the host's submounts, cgroups included). The
				// exception is the container's own tmpfs that runc 1.1
				// puts under the cgroup v1 hierarchies: it holds only
				// their mount points, and it is rw with Docker too.
				Args: sh(`cat /proc/self/uid_map; id -u; ls /sys/kernel >/dev/null && echo sys; grep -c ' /sys' /proc/self/mounts; grep ' /sys' /proc/self/mounts | grep -v '^tmpfs /sys/fs/cgroup tmpfs' | grep -vc ' ro[ ,]'`)})
			f := strings.Fields(out)
			if code != 1 || len(f) != 7 || f[0] != "0" || f[1] != "100000" || f[2] != "65536" || f[3] != "0" || f[4] != "sys" || f[6] != "0" {
				// grep -vc exits 1 when it counts no writable mount.
				t.Errorf("code %d out %q", code, out)
			}
			t.Logf("%s mounts under /sys, all read-only", f[5])
		})
	}
	assertNoState(t, r)
}
