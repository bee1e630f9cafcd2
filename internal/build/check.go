package build

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/userns"
)

// Check results.
const (
	CheckPass = "pass"
	CheckFail = "fail" // a build cannot work this way
	CheckWarn = "warn" // an optional feature (erofs, rootless, other architectures) is missing
	CheckInfo = "info" // what was found, nothing to judge
)

// HostCheck is one thing CheckHost looked at (stacker check's list).
type HostCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	// Detail says what was found; Hint, for fail and warn, what to do.
	Detail string `json:"detail,omitempty"`
	Hint   string `json:"hint,omitempty"`
}

// HostOptions say where CheckHost looks: the defaults are this machine's,
// tests point them at a fake tree.
type HostOptions struct {
	// Proc, Sys and Dev are the /proc, /sys and /dev directories.
	Proc, Sys, Dev string
	// SubUID and SubGID are the subordinate id files; User whose ranges
	// a rootless build maps (default: $SUDO_USER, else the caller).
	SubUID, SubGID string
	User           *userns.User
	// StoreRoot is the store that builds write to (checked for a
	// filesystem overlayfs takes as its upper directory).
	StoreRoot string
	// LookPath finds tools (default exec.LookPath).
	LookPath func(string) (string, error)
	// FSType is the statfs magic of a path (default unix.Statfs).
	FSType func(string) (int64, error)
	// Binfmt is the binfmt_misc directory.
	Binfmt string
	// Modules is the running kernel's module directory (default
	// /lib/modules/RELEASE): a module listed in its modules.dep is loaded
	// on first use.
	Modules string
}

func (o *HostOptions) defaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&o.Proc, "/proc")
	def(&o.Sys, "/sys")
	def(&o.Dev, "/dev")
	def(&o.SubUID, userns.SubUIDFile)
	def(&o.SubGID, userns.SubGIDFile)
	def(&o.Binfmt, binfmt.Dir)
	if o.LookPath == nil {
		o.LookPath = exec.LookPath
	}
	if o.FSType == nil {
		o.FSType = func(p string) (int64, error) {
			var st unix.Statfs_t
			if err := unix.Statfs(p, &st); err != nil {
				return 0, err
			}
			return int64(st.Type), nil
		}
	}
	if o.Modules == "" {
		var uts unix.Utsname
		if err := unix.Uname(&uts); err == nil {
			o.Modules = filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]))
		}
	}
	if o.User == nil {
		u := userns.CurrentUser()
		if sudo := os.Getenv("SUDO_USER"); sudo != "" && u.UID == 0 {
			u = userns.User{Name: sudo, UID: ^uint32(0), GID: ^uint32(0)} // match by name only
		}
		o.User = &u
	}
}

// ErrHostCheck is CheckHost's answer when a required check failed.
var ErrHostCheck = errors.New("this machine cannot build images")

// CheckHost looks at what vessel build needs on this machine, as stacker
// check does: the kernel (overlayfs, squashfs, erofs, loop devices,
// device-mapper verity), the tools (mksquashfs, mkfs.erofs, squashfuse,
// an OCI runtime, newuidmap), unprivileged user namespaces and the
// user's subordinate id ranges (rootless builds), the store's filesystem
// and emulators for other architectures. It reads only; the error is
// ErrHostCheck when a required check failed (the list says which, each
// with a hint).
func CheckHost(opt HostOptions) ([]HostCheck, error) {
	opt.defaults()
	var out []HostCheck
	add := func(c HostCheck) { out = append(out, c) }

	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		add(HostCheck{Name: "kernel", Status: CheckInfo, Detail: unix.ByteSliceToString(uts.Sysname[:]) + " " + unix.ByteSliceToString(uts.Release[:]) + " " + unix.ByteSliceToString(uts.Machine[:])})
	}
	fss := readFilesystems(filepath.Join(opt.Proc, "filesystems"))
	mods := availableModules(opt.Modules)
	kfs := func(name, module, what string, required bool) {
		c := HostCheck{Name: name + " filesystem", Status: CheckPass, Detail: what}
		if fss[name] {
			c.Detail = "in /proc/filesystems: " + what
		} else if pathExists(filepath.Join(opt.Sys, "module", module)) {
			c.Detail = "module " + module + " loaded: " + what
		} else if mods[module] {
			c.Detail = "module " + module + " is loaded on first use: " + what
		} else {
			c.Status, c.Detail, c.Hint = failOrWarn(required), "not in /proc/filesystems: "+what, "as root: modprobe "+module
		}
		add(c)
	}
	kfs("overlay", "overlay", "build containers write to an overlay on the base", true)
	kfs("squashfs", "squashfs", "squashfs layers are mounted by the kernel as root", true)
	kfs("erofs", "erofs", "only for erofs layers", false)
	kfs("fuse", "fuse", "rootless builds mount layers with squashfuse", false)

	loop := HostCheck{Name: "loop devices", Status: CheckPass, Detail: filepath.Join(opt.Dev, "loop-control")}
	if !pathExists(filepath.Join(opt.Dev, "loop-control")) {
		loop.Status, loop.Hint = CheckFail, "as root: modprobe loop"
		loop.Detail += " is missing: layers are attached to loop devices"
	}
	add(loop)
	dm := HostCheck{Name: "device-mapper verity", Status: CheckPass, Detail: filepath.Join(opt.Dev, "mapper/control")}
	switch {
	case !pathExists(filepath.Join(opt.Dev, "mapper/control")):
		dm.Status, dm.Hint = CheckFail, "as root: modprobe dm-mod dm-verity"
		dm.Detail += " is missing: root builds check every layer with dm-verity"
	case mods["dm-verity"] || mods["dm_verity"]:
		if !pathExists(filepath.Join(opt.Sys, "module/dm_verity")) {
			dm.Detail += " (dm_verity is loaded on first use)"
		}
	case !pathExists(filepath.Join(opt.Sys, "module/dm_verity")) && !dmBuiltin(opt.Proc):
		dm.Status, dm.Hint = CheckWarn, "as root: modprobe dm-verity (the kernel may load it on first use)"
		dm.Detail = "dm_verity is not loaded"
	}
	add(dm)

	tool := func(name, what string, required bool, hint string, alts ...string) {
		c := HostCheck{Name: name, Status: CheckPass}
		for _, n := range append([]string{name}, alts...) {
			if p, err := opt.LookPath(n); err == nil {
				c.Detail = p + ": " + what
				add(c)
				return
			}
		}
		c.Status, c.Detail, c.Hint = failOrWarn(required), "not found in $PATH: "+what, hint
		add(c)
	}
	tool("mksquashfs", "makes squashfs layers", true, "apt-get install squashfs-tools")
	tool("unsquashfs", "reads squashfs layers without mounting them", false, "apt-get install squashfs-tools")
	tool("mkfs.erofs", "only for erofs layers", false, "apt-get install erofs-utils")
	tool("squashfuse", "rootless builds mount layers with it", false, "apt-get install squashfuse")
	tool("runc", "runs the build scripts (runc or crun)", true, "apt-get install runc (or crun)", "crun")
	add(newuidmapCheck(opt))

	add(usernsCheck(opt))
	add(subIDCheck(opt))
	add(storeCheck(opt))
	add(binfmtCheck(opt))

	for _, c := range out {
		if c.Status == CheckFail {
			return out, ErrHostCheck
		}
	}
	return out, nil
}

func failOrWarn(required bool) string {
	if required {
		return CheckFail
	}
	return CheckWarn
}

func pathExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readFilesystems is the set of names in /proc/filesystems.
func readFilesystems(p string) map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile(p)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			out[f[len(f)-1]] = true
		}
	}
	return out
}

// dmBuiltin reports whether verity is built into the kernel (listed in
// /proc/kallsyms would need root; /proc/modules lists loaded modules, and
// a kernel without module support builds everything in).
func dmBuiltin(proc string) bool {
	_, err := os.Stat(filepath.Join(proc, "modules"))
	return errors.Is(err, fs.ErrNotExist)
}

// newuidmapCheck: rootless builds map the user's subordinate ids with
// newuidmap and newgidmap, which must be setuid root or carry file
// capabilities (stacker check verifies the same).
func newuidmapCheck(opt HostOptions) HostCheck {
	c := HostCheck{Name: "newuidmap", Status: CheckPass}
	for _, n := range []string{"newuidmap", "newgidmap"} {
		p, err := opt.LookPath(n)
		if err != nil {
			return HostCheck{Name: "newuidmap", Status: CheckWarn, Detail: n + " not found: rootless builds need it", Hint: "apt-get install uidmap"}
		}
		st, err := os.Stat(p)
		if err != nil {
			return HostCheck{Name: "newuidmap", Status: CheckWarn, Detail: fmt.Sprintf("%s: %v", p, err), Hint: "apt-get install --reinstall uidmap"}
		}
		if st.Mode()&fs.ModeSetuid == 0 && !hasFileCaps(p) {
			return HostCheck{Name: "newuidmap", Status: CheckWarn, Detail: p + " is neither setuid root nor has file capabilities: rootless builds cannot map subordinate ids",
				Hint: "as root: chmod u+s " + p + " (or setcap cap_setuid+ep / cap_setgid+ep)"}
		}
		c.Detail += p + " "
	}
	c.Detail = strings.TrimSpace(c.Detail) + ": map subordinate ids for rootless builds"
	return c
}

func hasFileCaps(p string) bool {
	buf := make([]byte, 64)
	n, err := unix.Getxattr(p, "security.capability", buf)
	return err == nil && n > 0
}

func usernsCheck(opt HostOptions) HostCheck {
	read := func(p string) (string, error) {
		b, err := os.ReadFile(filepath.Join(opt.Proc, strings.TrimPrefix(p, "/proc/")))
		return string(bytes.TrimSpace(b)), err
	}
	if err := userns.CheckSysctls(read); err != nil {
		return HostCheck{Name: "user namespaces", Status: CheckWarn, Detail: "unprivileged user namespaces are disabled: rootless builds cannot run", Hint: hintOf(err)}
	}
	return HostCheck{Name: "user namespaces", Status: CheckPass, Detail: "unprivileged user namespaces are allowed (rootless builds)"}
}

// hintOf is the fix line of a userns error ("as root, run\n\tFIX\n...").
func hintOf(err error) string {
	s := err.Error()
	if _, after, ok := strings.Cut(s, "\n\t"); ok {
		fix, _, _ := strings.Cut(after, "\n")
		return "as root: " + fix
	}
	return s
}

func subIDCheck(opt HostOptions) HostCheck {
	u := *opt.User
	who := u.Name
	if who == "" {
		who = fmt.Sprint(u.UID)
	}
	c := HostCheck{Name: "subordinate ids", Status: CheckPass}
	if u.UID == 0 && u.Name == "root" || u.UID == 0 && u.Name == "" {
		c.Status, c.Detail = CheckInfo, "running as root: rootless builds are not used (run vessel check as the user who builds, or with sudo)"
		return c
	}
	var counts [2]uint64
	for i, p := range []string{opt.SubUID, opt.SubGID} {
		f, err := os.Open(p)
		if err != nil {
			return HostCheck{Name: "subordinate ids", Status: CheckWarn, Detail: fmt.Sprintf("%s: %v", p, err),
				Hint: fmt.Sprintf("as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s", who)}
		}
		rs, err := userns.ParseSubIDs(f, p, u)
		f.Close()
		if err != nil {
			return HostCheck{Name: "subordinate ids", Status: CheckWarn, Detail: err.Error(), Hint: "fix the line in " + p}
		}
		for _, r := range rs {
			counts[i] += uint64(r.Count)
		}
	}
	if counts[0] == 0 || counts[1] == 0 {
		c.Status = CheckWarn
		c.Detail = fmt.Sprintf("%s has %d subordinate uids and %d gids: rootless builds need both", who, counts[0], counts[1])
		c.Hint = fmt.Sprintf("as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s", who)
		return c
	}
	c.Detail = fmt.Sprintf("%s: %d subordinate uids, %d gids (rootless builds)", who, counts[0], counts[1])
	if counts[0] < 65536 || counts[1] < 65536 {
		c.Status = CheckWarn
		c.Hint = "images with files of ids above the range cannot be built rootless: give at least 65536"
	}
	return c
}

// Filesystem magics that cannot hold a build's overlay upper directory.
const (
	nfsMagic     = 0x6969
	overlayMagic = 0x794c7630
)

func storeCheck(opt HostOptions) HostCheck {
	c := HostCheck{Name: "store filesystem", Status: CheckPass}
	if opt.StoreRoot == "" {
		c.Status, c.Detail = CheckInfo, "no store given"
		return c
	}
	p := opt.StoreRoot
	for !pathExists(p) && p != filepath.Dir(p) {
		p = filepath.Dir(p) // the store is made on first use: look at where it will be
	}
	t, err := opt.FSType(p)
	if err != nil {
		return HostCheck{Name: "store filesystem", Status: CheckFail, Detail: fmt.Sprintf("%s: %v", opt.StoreRoot, err), Hint: "use a store on a local filesystem (VESSEL_ROOT)"}
	}
	switch t {
	case nfsMagic:
		c.Status, c.Detail, c.Hint = CheckFail, opt.StoreRoot+" is on NFS: overlayfs cannot use it as its upper directory", "use a store on a local filesystem (VESSEL_ROOT)"
	case overlayMagic:
		c.Status, c.Detail, c.Hint = CheckFail, opt.StoreRoot+" is on overlayfs: it cannot be the upper directory of another overlay", "use a store on ext4, xfs, btrfs or tmpfs (VESSEL_ROOT)"
	default:
		c.Detail = fmt.Sprintf("%s (filesystem 0x%x)", opt.StoreRoot, t)
	}
	return c
}

func binfmtCheck(opt HostOptions) HostCheck {
	st, err := binfmt.Read(opt.Binfmt)
	c := HostCheck{Name: "other architectures", Status: CheckInfo}
	switch {
	case err != nil:
		c.Detail = err.Error()
	case !st.Mounted:
		c.Detail = "binfmt_misc is not mounted: only native builds"
		c.Hint = "vessel binfmt install --arch arm64 (as root) for cross builds"
	default:
		var arches []string
		for _, e := range st.Entries {
			if e.Enabled && e.Arch != "" && strings.Contains(e.Flags, "F") {
				arches = append(arches, e.Arch)
			}
		}
		if len(arches) == 0 {
			c.Detail = "no emulator registered with the F flag: only native builds"
			c.Hint = "vessel binfmt install --arch arm64 (as root) for cross builds"
		} else {
			c.Detail = "emulators for " + strings.Join(arches, ", ")
		}
	}
	return c
}

// availableModules are the module names listed in dir/modules.dep (and
// modules.builtin): what the kernel can load, or has built in.
func availableModules(dir string) map[string]bool {
	out := map[string]bool{}
	if dir == "" {
		return out
	}
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			path, _, _ := strings.Cut(line, ":")
			base := filepath.Base(strings.TrimSpace(path))
			if i := strings.Index(base, ".ko"); i > 0 {
				out[base[:i]] = true
			}
		}
	}
	return out
}
