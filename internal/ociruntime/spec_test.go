package ociruntime

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func mustSpec(t *testing.T, c Config) *specs.Spec {
	t.Helper()
	if c.ID == "" {
		c.ID = "c1"
	}
	if c.Rootfs == "" {
		c.Rootfs = t.TempDir()
	}
	if c.Args == nil {
		c.Args = []string{"/bin/true"}
	}
	s, err := Spec(c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func nsTypes(s *specs.Spec) []string {
	var out []string
	for _, n := range s.Linux.Namespaces {
		out = append(out, string(n.Type))
	}
	slices.Sort(out)
	return out
}

func TestSpecNamespaces(t *testing.T) {
	maps := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	for _, tc := range []struct {
		name string
		c    Config
		want []string
	}{
		{"default none", Config{}, []string{"ipc", "mount", "network", "pid", "uts"}},
		{"none", Config{Network: "none"}, []string{"ipc", "mount", "network", "pid", "uts"}},
		{"host", Config{Network: "host"}, []string{"ipc", "mount", "pid", "uts"}},
		{"userns", Config{UIDMappings: maps, GIDMappings: maps}, []string{"ipc", "mount", "network", "pid", "user", "uts"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nsTypes(mustSpec(t, tc.c)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("namespaces %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := Spec(Config{ID: "x", Rootfs: "/", Args: []string{"a"}, Network: "bridge"}); err == nil {
		t.Error("network bridge accepted")
	}
}

func TestSpecCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name            string
		base, add, drop []string
		want            []string
		err             string
	}{
		{name: "default", want: DefaultCapabilities()},
		{name: "explicit list", base: []string{"kill", "CAP_CHOWN"}, want: []string{"CAP_CHOWN", "CAP_KILL"}},
		{name: "explicit empty", base: []string{}, want: []string{}},
		{name: "add", add: []string{"net_admin"}, want: sortCaps(append(DefaultCapabilities(), "CAP_NET_ADMIN"))},
		{name: "drop", drop: []string{"Cap_Net_Raw", "MKNOD"}, want: without(DefaultCapabilities(), "CAP_NET_RAW", "CAP_MKNOD")},
		{name: "add all", add: []string{"all"}, drop: []string{"sys_admin"}, want: without(AllCapabilities(), "CAP_SYS_ADMIN")},
		{name: "drop all", add: []string{"kill"}, drop: []string{"ALL"}, want: []string{"CAP_KILL"}},
		{name: "unknown add", add: []string{"CAP_FLY"}, err: `"CAP_FLY"`},
		{name: "unknown drop", drop: []string{"teleport"}, err: `"teleport"`},
		{name: "unknown base", base: []string{"kill", "nope"}, err: `"nope"`},
		{name: "all in base", base: []string{"ALL"}, err: "ALL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Spec(Config{ID: "c", Rootfs: t.TempDir(), Args: []string{"x"}, Capabilities: tc.base, CapAdd: tc.add, CapDrop: tc.drop})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := s.Process.Capabilities
			for name, set := range map[string][]string{"bounding": c.Bounding, "effective": c.Effective, "permitted": c.Permitted} {
				if !slices.Equal(set, tc.want) {
					t.Errorf("%s %v, want %v", name, set, tc.want)
				}
			}
			if len(c.Inheritable) != 0 || len(c.Ambient) != 0 {
				t.Errorf("inheritable %v ambient %v, want none", c.Inheritable, c.Ambient)
			}
		})
	}
}

func without(list []string, drop ...string) []string {
	return slices.DeleteFunc(list, func(s string) bool { return slices.Contains(drop, s) })
}

func TestNormalizeCapability(t *testing.T) {
	for in, want := range map[string]string{"net_admin": "CAP_NET_ADMIN", "CAP_SYS_ADMIN": "CAP_SYS_ADMIN", "cap_bpf": "CAP_BPF", " kill ": "CAP_KILL", "all": "ALL"} {
		if got, err := NormalizeCapability(in); err != nil || got != want {
			t.Errorf("NormalizeCapability(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := NormalizeCapability("CAP_"); err == nil {
		t.Error("CAP_ accepted")
	}
	if len(DefaultCapabilities()) != 14 || len(AllCapabilities()) != 41 {
		t.Errorf("%d default, %d known capabilities", len(DefaultCapabilities()), len(AllCapabilities()))
	}
	m, err := CapabilityMask([]string{"chown", "kill", "sys_admin"})
	if err != nil || m != 1<<0|1<<5|1<<21 {
		t.Errorf("mask %#x %v", m, err)
	}
}

func TestSpecNonRootCapabilities(t *testing.T) {
	s := mustSpec(t, Config{User: "1000:1000"})
	c := s.Process.Capabilities
	if !slices.Equal(c.Bounding, DefaultCapabilities()) || len(c.Effective)+len(c.Permitted)+len(c.Ambient) != 0 {
		t.Errorf("non-root capabilities %+v: want bounding only", c)
	}
}

func TestSpecBasics(t *testing.T) {
	s := mustSpec(t, Config{ID: "web", Args: []string{"/bin/httpd", "-f"}, Env: []string{"A=1"}, Cwd: "/srv", ReadOnly: true})
	p := s.Process
	if !s.Root.Readonly || s.Hostname != "web" || p.Cwd != "/srv" || !p.NoNewPrivileges || p.Terminal {
		t.Errorf("root %+v hostname %q cwd %q nnp %v terminal %v", s.Root, s.Hostname, p.Cwd, p.NoNewPrivileges, p.Terminal)
	}
	if want := []string{"A=1", DefaultPath, "HOME=/"}; !slices.Equal(p.Env, want) {
		t.Errorf("env %q, want %q", p.Env, want)
	}
	if p.User.UID != 0 || p.User.GID != 0 {
		t.Errorf("user %+v", p.User)
	}
	if len(p.Rlimits) != 1 || p.Rlimits[0].Type != "RLIMIT_NOFILE" {
		t.Errorf("rlimits %+v", p.Rlimits)
	}
	s = mustSpec(t, Config{Env: []string{"PATH=/x", "TERM=vt100", "HOME=/h"}, Terminal: true, Hostname: "h1"})
	if want := []string{"PATH=/x", "TERM=vt100", "HOME=/h"}; !slices.Equal(s.Process.Env, want) || !s.Process.Terminal || s.Hostname != "h1" {
		t.Errorf("env %q terminal %v hostname %q", s.Process.Env, s.Process.Terminal, s.Hostname)
	}
	if s := mustSpec(t, Config{Terminal: true}); !slices.Contains(s.Process.Env, "TERM=xterm") {
		t.Errorf("terminal env %q lacks TERM", s.Process.Env)
	}
	for _, bad := range []Config{
		{ID: "Bad", Rootfs: "/", Args: []string{"x"}},
		{ID: "-x", Rootfs: "/", Args: []string{"x"}},
		{ID: "ok", Rootfs: "rel", Args: []string{"x"}},
		{ID: "ok", Rootfs: "/"},
		{ID: "ok", Rootfs: "/", Args: []string{"x"}, Cwd: "rel"},
		{ID: "ok", Rootfs: "/", Args: []string{"x"}, Env: []string{"NOEQUALS"}},
		{ID: "ok", Rootfs: "/", Args: []string{"x"}, Mounts: []Bind{{Source: "rel", Target: "/d"}}},
		{ID: "ok", Rootfs: "/", Args: []string{"x"}, UIDMappings: []specs.LinuxIDMapping{{Size: 1}}},
	} {
		if _, err := Spec(bad); err == nil {
			t.Errorf("Spec(%+v) accepted", bad)
		}
	}
}

func TestSpecUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1000:\nextra:x:2000:app\nweb:x:33:\n"), 0o644)
	for _, tc := range []struct {
		spec   string
		uid    uint32
		gid    uint32
		groups []uint32
		home   string
		err    bool
	}{
		{"", 0, 0, nil, "/root", false},
		{"app", 1000, 1000, []uint32{2000}, "/home/app", false},
		{"app:web", 1000, 33, nil, "/home/app", false},
		{"1000", 1000, 1000, []uint32{2000}, "/home/app", false},
		{"4242:4343", 4242, 4343, nil, "/", false},
		{"ghost", 0, 0, nil, "", true},
		{"app:ghosts", 0, 0, nil, "", true},
	} {
		s, err := Spec(Config{ID: "u", Rootfs: root, Args: []string{"x"}, User: tc.spec})
		if tc.err {
			if err == nil {
				t.Errorf("user %q accepted", tc.spec)
			}
			continue
		}
		if err != nil {
			t.Errorf("user %q: %v", tc.spec, err)
			continue
		}
		u := s.Process.User
		if u.UID != tc.uid || u.GID != tc.gid || !slices.Equal(u.AdditionalGids, tc.groups) || !slices.Contains(s.Process.Env, "HOME="+tc.home) {
			t.Errorf("user %q: %+v env %q; want %d:%d %v home %s", tc.spec, u, s.Process.Env, tc.uid, tc.gid, tc.groups, tc.home)
		}
	}
	// A passwd symlink pointing outside the rootfs resolves inside it.
	evil := t.TempDir()
	os.MkdirAll(filepath.Join(evil, "etc"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(evil, "etc/passwd"))
	if _, err := Spec(Config{ID: "u", Rootfs: evil, Args: []string{"x"}, User: "root"}); err == nil {
		t.Error("user root resolved through a symlink to the host's /etc/passwd")
	}
	// No passwd at all: numeric ids work.
	if s := mustSpec(t, Config{User: "5:6"}); s.Process.User.UID != 5 || s.Process.User.GID != 6 {
		t.Errorf("numeric user without passwd: %+v", s.Process.User)
	}
}

func TestSpecMounts(t *testing.T) {
	s := mustSpec(t, Config{Mounts: []Bind{{Source: "/srv/data/", Target: "/data"}, {Source: "/etc/ssl", Target: "/etc/ssl", ReadOnly: true}}})
	n := len(s.Mounts)
	if got := s.Mounts[n-2]; got.Destination != "/data" || got.Source != "/srv/data" || got.Type != "bind" || slices.Contains(got.Options, "ro") {
		t.Errorf("rw bind %+v", got)
	}
	if got := s.Mounts[n-1]; !slices.Contains(got.Options, "ro") || !slices.Contains(got.Options, "rbind") {
		t.Errorf("ro bind %+v", got)
	}
	sys := func(s *specs.Spec) specs.Mount {
		for _, m := range s.Mounts {
			if m.Destination == "/sys" {
				return m
			}
		}
		t.Fatal("no /sys mount")
		return specs.Mount{}
	}
	if m := sys(s); m.Type != "sysfs" || !slices.Contains(m.Options, "ro") {
		t.Errorf("/sys %+v", m)
	}
	maps := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	us := mustSpec(t, Config{Network: "host", UIDMappings: maps, GIDMappings: maps})
	if m := sys(us); m.Type != "bind" || !slices.Contains(m.Options, "rbind") || !slices.Contains(m.Options, "rro") {
		t.Errorf("userns host-network /sys %+v", m)
	}
	if !reflect.DeepEqual(us.Linux.UIDMappings, maps) || !reflect.DeepEqual(us.Linux.GIDMappings, maps) {
		t.Errorf("maps %+v %+v", us.Linux.UIDMappings, us.Linux.GIDMappings)
	}
	// gid=5 on devpts only when gid 5 exists in the container.
	one := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 1}}
	for _, m := range mustSpec(t, Config{UIDMappings: one, GIDMappings: one}).Mounts {
		if m.Destination == "/dev/pts" && slices.Contains(m.Options, "gid=5") {
			t.Errorf("devpts gid=5 with gid 5 unmapped: %v", m.Options)
		}
	}
}

// TestSpecMatchesRuncDefaults compares with `runc spec`: every default
// mount, masked and read-only path runc's own template has, vessel's has.
func TestSpecMatchesRuncDefaults(t *testing.T) {
	path, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not installed: no reference spec")
	}
	dir := t.TempDir()
	cmd := exec.Command(path, "spec")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v %s", err, out)
	}
	var ref specs.Spec
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	s := mustSpec(t, Config{})
	for _, p := range ref.Linux.MaskedPaths {
		if !slices.Contains(s.Linux.MaskedPaths, p) {
			t.Errorf("masked path %s missing", p)
		}
	}
	for _, p := range ref.Linux.ReadonlyPaths {
		if !slices.Contains(s.Linux.ReadonlyPaths, p) {
			t.Errorf("read-only path %s missing", p)
		}
	}
	for _, rm := range ref.Mounts {
		i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == rm.Destination })
		if i < 0 {
			t.Errorf("mount %s missing", rm.Destination)
			continue
		}
		if m := s.Mounts[i]; m.Type != rm.Type || m.Source != rm.Source {
			t.Errorf("mount %s: %s %s, runc has %s %s", rm.Destination, m.Type, m.Source, rm.Type, rm.Source)
		}
	}
	if !reflect.DeepEqual(nsTypes(s), nsTypes(&ref)) {
		t.Errorf("namespaces %v, runc %v", nsTypes(s), nsTypes(&ref))
	}
	if !reflect.DeepEqual(s.Linux.Resources.Devices, ref.Linux.Resources.Devices) {
		t.Errorf("devices %+v, runc %+v", s.Linux.Resources.Devices, ref.Linux.Resources.Devices)
	}
}

func TestWriteBundleRoundTrip(t *testing.T) {
	s := mustSpec(t, Config{Mounts: []Bind{{Source: "/a", Target: "/b"}}, CapAdd: []string{"sys_time"}})
	dir := t.TempDir()
	if err := WriteBundle(dir, s); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back specs.Spec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, s) {
		t.Errorf("round trip differs:\n%+v\n%+v", &back, s)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("bundle holds %d entries, want only config.json", len(ents))
	}
}

func TestFromImage(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/init"}, Cmd: []string{"--serve"}, Env: []string{"A=1", "PATH=/bin"}, User: "app", WorkingDir: "/srv"}
	for _, tc := range []struct {
		name      string
		img       ocispec.ImageConfig
		o         Overrides
		args, env []string
		user, cwd string
	}{
		{"image", img, Overrides{}, []string{"/init", "--serve"}, []string{"A=1", "PATH=/bin"}, "app", "/srv"},
		{"cmd replaces cmd", img, Overrides{Cmd: []string{"--debug"}}, []string{"/init", "--debug"}, []string{"A=1", "PATH=/bin"}, "app", "/srv"},
		{"entrypoint drops cmd", img, Overrides{Entrypoint: []string{"/bin/sh"}}, []string{"/bin/sh"}, []string{"A=1", "PATH=/bin"}, "app", "/srv"},
		{"entrypoint and cmd", img, Overrides{Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "x"}}, []string{"/bin/sh", "-c", "x"}, []string{"A=1", "PATH=/bin"}, "app", "/srv"},
		{"no entrypoint", ocispec.ImageConfig{Cmd: []string{"sh"}}, Overrides{Cmd: []string{"ls", "/"}}, []string{"ls", "/"}, nil, "", ""},
		{"env, user, cwd", img, Overrides{Env: []string{"B=2", "A=3", "A=4"}, User: "0:0", Cwd: "/tmp"}, []string{"/init", "--serve"}, []string{"A=4", "PATH=/bin", "B=2"}, "0:0", "/tmp"},
	} {
		c, err := FromImage(tc.img, tc.o)
		if err != nil || !slices.Equal(c.Args, tc.args) || !slices.Equal(c.Env, tc.env) || c.User != tc.user || c.Cwd != tc.cwd {
			t.Errorf("%s: %q %q %q %q %v", tc.name, c.Args, c.Env, c.User, c.Cwd, err)
		}
	}
	if !slices.Equal(img.Env, []string{"A=1", "PATH=/bin"}) {
		t.Errorf("the image's env was modified: %q", img.Env)
	}
	if _, err := FromImage(ocispec.ImageConfig{Env: []string{"A=1"}}, Overrides{Env: []string{"B=1"}}); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("nothing to run: %v", err)
	}
}

func TestCgroupParent(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct{ parent, want string }{
		{"", "/vessel/box"},
		{"/vessel/0123abcd", "/vessel/0123abcd/box"},
		{"custom", "/custom/box"},
	} {
		s, err := Spec(Config{ID: "box", Rootfs: root, Args: []string{"/bin/true"}, CgroupParent: tc.parent})
		if err != nil {
			t.Fatal(err)
		}
		if s.Linux.CgroupsPath != tc.want {
			t.Errorf("parent %q: cgroups path %q, want %q", tc.parent, s.Linux.CgroupsPath, tc.want)
		}
	}
}
