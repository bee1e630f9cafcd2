package ociruntime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/sys/user"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/lazyre"
)

// Config describes one container. It is pure data: Spec turns it into an
// OCI runtime-spec document, WriteBundle writes that to a bundle directory,
// and a Runtime runs the bundle.
type Config struct {
	ID     string   // container id: [a-z0-9][a-z0-9_.-]*, at most 128 bytes
	Rootfs string   // absolute path of an already-mounted root filesystem
	Args   []string // argv; required
	Env    []string // KEY=VALUE; PATH (and TERM with Terminal, HOME from the passwd entry) added when missing
	// User is "uid[:gid]" or "name[:group]", names resolved in Rootfs's
	// /etc/passwd and /etc/group (symlinks cannot leave Rootfs). Default 0:0.
	User     string
	Cwd      string // default "/"
	Hostname string // default: the ID
	// Capabilities nil means DefaultCapabilities(); non-nil means exactly
	// this list (empty: none). CapAdd and CapDrop apply on top with
	// Docker's rules (see resolveCaps). Names: "CAP_X" or "x", any case.
	Capabilities    []string
	CapAdd, CapDrop []string
	Network         string // NetworkNone (default, own netns with only lo) or NetworkHost
	ReadOnly        bool   // mount the root read-only
	// Unconfined turns off the default seccomp filter (see seccomp.go).
	Unconfined bool
	// SeccompProfile, if set, replaces the default filter: a profile in
	// Docker's or the OCI runtime spec's JSON format (ParseSeccompProfile).
	SeccompProfile []byte
	// CgroupParent is the cgroup directory the container's cgroup is made
	// in (default /vessel). Container ids are unique only within one run
	// directory, so callers with several give each its own parent.
	CgroupParent string
	Terminal     bool   // allocate a pty for the process
	Mounts       []Bind // bind mounts (volumes), applied in order
	// UIDMappings and GIDMappings, when set, put the container in a new
	// user namespace with these maps. Set both or neither.
	UIDMappings, GIDMappings []specs.LinuxIDMapping
}

// Bind is a bind mount of a host path into the container.
type Bind struct {
	Source   string // absolute host path
	Target   string // absolute path inside the container
	ReadOnly bool
}

// Network modes.
const (
	NetworkNone = "none"
	NetworkHost = "host"
)

// DefaultPath is the PATH a container gets when its Env has none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// NOFILE limits for the container process: runc's and containerd's
// default. The runtime sets them after dropping privileges, so the hard
// limit cannot exceed vessel's own.
const (
	nofileSoft = 1024
	nofileHard = 1024
)

// maskedPaths and readonlyPaths are runc's `runc spec` defaults plus the
// paths Docker and containerd also mask.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
		"/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

var idRE = lazyre.New(`^[a-z0-9][a-z0-9_.-]*$`)

// ValidID reports whether id can name a container.
func ValidID(id string) bool { return len(id) <= 128 && idRE.MatchString(id) }

// Overrides are what a user sets for a container's process on top of its
// image's config: `vessel run` flags and arguments, a service definition.
type Overrides struct {
	// Entrypoint, when set, replaces the image's Entrypoint and drops its
	// Cmd (a service's command; Docker's --entrypoint).
	Entrypoint []string
	// Cmd, when set, replaces the image's Cmd (`vessel run IMAGE COMMAND`,
	// a service's args).
	Cmd []string
	// Env entries KEY=VALUE replace the image's KEY or are added, in order.
	Env       []string
	User, Cwd string // replace the image's when set
}

// FromImage turns an image's config and the user's overrides into the
// process part of a container config (Args, Env, User, Cwd), with OCI
// image-config semantics: the process is Entrypoint followed by Cmd; the
// environment, user and working directory come from the image unless
// overridden. It is the one place vessel merges the two: `vessel run`, the
// service supervisor and tests all call it. It fails when neither says
// what to run.
func FromImage(img ocispec.ImageConfig, o Overrides) (Config, error) {
	var c Config
	switch {
	case len(o.Entrypoint) > 0:
		c.Args = append(append(c.Args, o.Entrypoint...), o.Cmd...)
	case len(o.Cmd) > 0:
		c.Args = append(append(c.Args, img.Entrypoint...), o.Cmd...)
	default:
		c.Args = append(append(c.Args, img.Entrypoint...), img.Cmd...)
	}
	if len(c.Args) == 0 {
		return Config{}, errors.New("no command: the image has neither entrypoint nor cmd, and none was given")
	}
	c.Env = MergeEnv(img.Env, o.Env)
	c.User, c.Cwd = img.User, img.WorkingDir
	if o.User != "" {
		c.User = o.User
	}
	if o.Cwd != "" {
		c.Cwd = o.Cwd
	}
	return c, nil
}

// MergeEnv returns base with the KEY=VALUE entries of over applied: an
// entry replaces every entry of base with the same KEY, or is appended.
// base is not modified.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, e := range out {
			if ek, _, _ := strings.Cut(e, "="); ek == k {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// Spec builds the runtime-spec document for c. It reads nothing but
// Rootfs's /etc/passwd and /etc/group (only when User names a user or
// group, or to find HOME) and has no side effects.
//
// The result: pid, ipc, uts and mount namespaces, a network namespace
// unless Network is host, a user namespace when id maps are given;
// capabilities in the bounding set, and for uid 0 also in the effective and
// permitted sets (never inheritable or ambient: a non-root process gains
// capabilities only from file capabilities, as with Docker); no_new_privs;
// /proc, /dev (tmpfs), /dev/pts, /dev/shm, /dev/mqueue, /sys (read-only)
// and /sys/fs/cgroup (read-only) mounts; runc's masked and read-only paths;
// a device cgroup that denies all but the runtime's default devices.
func Spec(c Config) (*specs.Spec, error) {
	if !ValidID(c.ID) {
		return nil, fmt.Errorf("container id %q: must match [a-z0-9][a-z0-9_.-]* (at most 128 bytes)", c.ID)
	}
	if !filepath.IsAbs(c.Rootfs) {
		return nil, fmt.Errorf("container %s: rootfs %q is not an absolute path", c.ID, c.Rootfs)
	}
	if len(c.Args) == 0 || c.Args[0] == "" {
		return nil, fmt.Errorf("container %s: no command to run", c.ID)
	}
	network := c.Network
	if network == "" {
		network = NetworkNone
	}
	if network != NetworkNone && network != NetworkHost {
		return nil, fmt.Errorf("container %s: network %q: want %q or %q", c.ID, c.Network, NetworkNone, NetworkHost)
	}
	if (len(c.UIDMappings) == 0) != (len(c.GIDMappings) == 0) {
		return nil, fmt.Errorf("container %s: a user namespace needs both uid and gid mappings", c.ID)
	}
	userns := len(c.UIDMappings) > 0
	cwd := c.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return nil, fmt.Errorf("container %s: working directory %q is not absolute", c.ID, cwd)
	}
	hostname := c.Hostname
	if hostname == "" {
		hostname = c.ID
	}
	for _, e := range c.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, fmt.Errorf("container %s: environment entry %q is not KEY=VALUE", c.ID, e)
		}
	}

	u, err := ResolveUser(c.Rootfs, c.User)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	caps, err := resolveCaps(c.Capabilities, c.CapAdd, c.CapDrop)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	lc := &specs.LinuxCapabilities{Bounding: caps}
	if u.UID == 0 {
		lc.Effective = caps
		lc.Permitted = caps
	}

	env := append([]string(nil), c.Env...)
	if !hasEnv(env, "PATH") {
		env = append(env, DefaultPath)
	}
	if !hasEnv(env, "HOME") {
		env = append(env, "HOME="+u.Home)
	}
	if c.Terminal && !hasEnv(env, "TERM") {
		env = append(env, "TERM=xterm")
	}

	s := &specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{
			Terminal:        c.Terminal,
			User:            specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids},
			Args:            append([]string(nil), c.Args...),
			Env:             env,
			Cwd:             cwd,
			Capabilities:    lc,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: nofileSoft, Hard: nofileHard}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: c.Rootfs, Readonly: c.ReadOnly},
		Hostname: hostname,
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			CgroupsPath:   path.Join(cgroupParent(c.CgroupParent), c.ID),
			MaskedPaths:   append([]string(nil), maskedPaths...),
			ReadonlyPaths: append([]string(nil), readonlyPaths...),
		},
	}
	ns := []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace}
	if network == NetworkNone {
		ns = append(ns, specs.NetworkNamespace)
	}
	if userns {
		ns = append(ns, specs.UserNamespace)
		s.Linux.UIDMappings = append([]specs.LinuxIDMapping(nil), c.UIDMappings...)
		s.Linux.GIDMappings = append([]specs.LinuxIDMapping(nil), c.GIDMappings...)
	}
	for _, t := range ns {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: t})
	}

	s.Mounts = baseMounts(network == NetworkHost, userns, mapped(c.GIDMappings, 5))
	for _, b := range c.Mounts {
		if !filepath.IsAbs(b.Source) || !filepath.IsAbs(b.Target) {
			return nil, fmt.Errorf("container %s: bind %s:%s: source and target must be absolute paths", c.ID, b.Source, b.Target)
		}
		opts := []string{"rbind", "rprivate"}
		if b.ReadOnly {
			opts = append(opts, "ro")
		}
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: filepath.Clean(b.Target), Type: "bind", Source: filepath.Clean(b.Source), Options: opts,
		})
	}
	switch {
	case c.SeccompProfile != nil:
		sp, err := ParseSeccompProfile(c.SeccompProfile, caps)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", c.ID, err)
		}
		s.Linux.Seccomp = sp
	case !c.Unconfined:
		s.Linux.Seccomp = seccompProfile(caps)
	}
	if inUserNS() {
		forUserNS(s) // vessel is rootless: see rootless.go
	}
	return s, nil
}

// baseMounts are the kernel filesystems every container gets. sysfs can be
// mounted only by a user namespace that owns the network namespace, so a
// user-namespaced container on the host network gets a recursive read-only
// bind of the host's /sys instead (as `runc spec --rootless` does).
func baseMounts(hostNet, userns, gid5Mapped bool) []specs.Mount {
	pts := []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}
	if !userns || gid5Mapped {
		pts = append(pts, "gid=5") // the tty group, when it exists in the container
	}
	m := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: pts},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
	}
	if userns && hostNet {
		m = append(m, specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "rro"}})
		return m
	}
	return append(m,
		specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	)
}

func mapped(maps []specs.LinuxIDMapping, id uint32) bool {
	for _, m := range maps {
		if id >= m.ContainerID && id-m.ContainerID < m.Size {
			return true
		}
	}
	return false
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

// User is a resolved container user.
type User struct {
	UID, GID       uint32
	AdditionalGids []uint32
	Home           string
}

// ResolveUser resolves spec ("", "uid", "uid:gid", "name", "name:group")
// against rootfs's /etc/passwd and /etc/group, following Docker's rules:
// a numeric id needs no entry; a name must exist; supplementary groups come
// from /etc/group when the group is not given explicitly. The files are
// opened with every path component resolved inside rootfs.
func ResolveUser(rootfs, spec string) (User, error) {
	// The files are read even for the default user: HOME comes from passwd.
	var passwd, group io.Reader
	pf, err := openInRoot(rootfs, "etc/passwd")
	if err != nil {
		return User{}, err
	}
	if pf != nil {
		defer pf.Close()
		passwd = pf
	}
	gf, err := openInRoot(rootfs, "etc/group")
	if err != nil {
		return User{}, err
	}
	if gf != nil {
		defer gf.Close()
		group = gf
	}
	def := &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}
	eu, err := user.GetExecUser(spec, def, passwd, group)
	if err != nil {
		return User{}, fmt.Errorf("user %q: %w", spec, err)
	}
	u := User{UID: uint32(eu.Uid), GID: uint32(eu.Gid), Home: eu.Home}
	if u.Home == "" {
		u.Home = "/"
	}
	for _, g := range eu.Sgids {
		if uint32(g) != u.GID {
			u.AdditionalGids = append(u.AdditionalGids, uint32(g))
		}
	}
	return u, nil
}

// openInRoot opens rootfs/name with every component (symlinks included)
// resolved as if rootfs were "/". A missing file is (nil, nil).
func openInRoot(rootfs, name string) (*os.File, error) {
	dir, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open rootfs %s: %w", rootfs, err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", name, rootfs, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(rootfs, name)), nil
}

func cgroupParent(p string) string {
	if p == "" {
		return "/vessel"
	}
	return path.Join("/", p)
}

// WriteBundle writes s as dir/config.json, in place: the bundle is read
// by the runtime started after it returns, by nobody while it is being
// written. dir must exist; the root filesystem is not copied: s.Root.Path
// points at it. Bundles are per-boot state, so the file is not fsynced.
func WriteBundle(dir string, s *specs.Spec) error {
	data, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return fmt.Errorf("encode bundle config: %w", err)
	}
	// Written in place, not through a temporary file and a rename: only
	// the runtime reads it, and only after this returns; a start that
	// dies part-way writes the whole file again (two syscalls fewer on
	// every start, each a journal update on a disk run directory).
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		return fmt.Errorf("write bundle %s: %w", dir, err)
	}
	return nil
}
