// Package caps learns the smallest set of Linux capabilities a workload
// needs, and says why each one is needed.
//
// The pipeline: Learn runs the workload once with every capability vessel
// holds while a Tracer (a BPF program on the capability:cap_capable
// tracepoint, filtered in the kernel to the workload's cgroup) records each
// capability check with its kernel stack; Classify sorts the checks into
// granted, denied and no-audit probes (the memory-accounting path asks for
// CAP_SYS_ADMIN on every mmap, brk and execve and must not count); the
// granted capabilities are an upper bound that Learn shrinks by running
// the workload again with one capability dropped at a time and keeping only
// those whose removal changes the outcome. Where the kernel cannot trace
// (no BPF permission, no tracepoint: Linux 6.1), the search starts from
// every capability: slower, same answer for the outcome it can see.
//
// Everything but the tracer and the runner that starts containers is plain
// data and functions (Classify, Learn over a Runner, Explain) that tests
// drive without root. Workloads are run by a Runner; VesselRunner starts them through the
// vessel binary (vessel run) in a cgroup it creates.
package caps

import (
	"fmt"
	"sort"
	"strings"
)

// names are the capabilities by number (linux/capability.h, up to
// CAP_CHECKPOINT_RESTORE, Linux 5.9).
var names = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// about says in a few words what each capability lets a process do.
var about = map[string]string{
	"CAP_CHOWN":              "change the owner or group of files",
	"CAP_DAC_OVERRIDE":       "read, write and execute files regardless of their permission bits",
	"CAP_DAC_READ_SEARCH":    "read files and list directories regardless of their permission bits",
	"CAP_FOWNER":             "act on files it does not own (chmod, utime, xattrs)",
	"CAP_FSETID":             "keep set-user/group-id bits when changing a file",
	"CAP_KILL":               "send signals to processes of other users",
	"CAP_SETGID":             "change its group ids",
	"CAP_SETUID":             "change its user ids",
	"CAP_SETPCAP":            "change capability sets and securebits",
	"CAP_LINUX_IMMUTABLE":    "set the immutable and append-only file flags",
	"CAP_NET_BIND_SERVICE":   "bind to a port below 1024",
	"CAP_NET_BROADCAST":      "broadcast and listen to multicast",
	"CAP_NET_ADMIN":          "configure network interfaces, routes and firewall",
	"CAP_NET_RAW":            "open raw and packet sockets (ping, packet capture)",
	"CAP_IPC_LOCK":           "lock memory (mlock) and use huge pages",
	"CAP_IPC_OWNER":          "bypass System V IPC permission checks",
	"CAP_SYS_MODULE":         "load and unload kernel modules",
	"CAP_SYS_RAWIO":          "raw I/O: ioperm, iopl, /dev/mem",
	"CAP_SYS_CHROOT":         "chroot",
	"CAP_SYS_PTRACE":         "trace or inspect other processes",
	"CAP_SYS_PACCT":          "configure process accounting",
	"CAP_SYS_ADMIN":          "mount, namespaces and many other administrative operations",
	"CAP_SYS_BOOT":           "reboot and kexec",
	"CAP_SYS_NICE":           "raise priorities and set real-time scheduling",
	"CAP_SYS_RESOURCE":       "exceed resource limits and quotas",
	"CAP_SYS_TIME":           "set the system clock",
	"CAP_SYS_TTY_CONFIG":     "configure terminals (vhangup)",
	"CAP_MKNOD":              "create device nodes",
	"CAP_LEASE":              "take leases on files it does not own",
	"CAP_AUDIT_WRITE":        "write to the kernel audit log",
	"CAP_AUDIT_CONTROL":      "configure kernel auditing",
	"CAP_SETFCAP":            "set file capabilities",
	"CAP_MAC_OVERRIDE":       "override mandatory access control",
	"CAP_MAC_ADMIN":          "configure mandatory access control",
	"CAP_SYSLOG":             "read and clear the kernel log",
	"CAP_WAKE_ALARM":         "set alarms that wake the system",
	"CAP_BLOCK_SUSPEND":      "block system suspend",
	"CAP_AUDIT_READ":         "read the audit log through netlink",
	"CAP_PERFMON":            "use performance monitoring",
	"CAP_BPF":                "use BPF",
	"CAP_CHECKPOINT_RESTORE": "checkpoint and restore processes",
}

// Name returns the name of capability number n ("CAP_17" when unknown).
func Name(n int) string {
	if n >= 0 && n < len(names) {
		return names[n]
	}
	return fmt.Sprintf("CAP_%d", n)
}

// Number returns the number of a capability name ("net_raw", "NET_RAW"
// or "CAP_NET_RAW").
func Number(name string) (int, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "CAP_") {
		n = "CAP_" + n
	}
	for i, c := range names {
		if c == n {
			return i, nil
		}
	}
	return -1, fmt.Errorf("unknown capability %q", name)
}

// Normalize returns the CAP_-prefixed upper-case name of a capability.
func Normalize(name string) (string, error) {
	n, err := Number(name)
	if err != nil {
		return "", err
	}
	return names[n], nil
}

// About says in a few words what capability name lets a process do.
func About(name string) string { return about[name] }

// All returns every capability name, in number order.
func All() []string { return append([]string(nil), names...) }

// FromMask returns the capabilities set in a /proc/PID/status mask
// (CapBnd, CapEff), in number order.
func FromMask(m uint64) []string {
	var out []string
	for i, n := range names {
		if m&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// Short drops the CAP_ prefix: the spelling vessel run, Docker and
// system.yaml use.
func Short(name string) string { return strings.TrimPrefix(name, "CAP_") }

// sortNames sorts capability names by number (unknown names last, by
// name) and removes duplicates.
func sortNames(c []string) []string {
	num := func(s string) int {
		if n, err := Number(s); err == nil {
			return n
		}
		return len(names)
	}
	sort.SliceStable(c, func(i, j int) bool {
		if a, b := num(c[i]), num(c[j]); a != b {
			return a < b
		}
		return c[i] < c[j]
	})
	out := c[:0]
	for i, s := range c {
		if i == 0 || s != c[i-1] {
			out = append(out, s)
		}
	}
	return out
}

// without returns set minus name, as a new slice.
func without(set []string, name string) []string {
	out := make([]string, 0, len(set))
	for _, s := range set {
		if s != name {
			out = append(out, s)
		}
	}
	return out
}
