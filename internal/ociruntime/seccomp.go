package ociruntime

import (
	goruntime "runtime"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// seccompRule denies syscalls unless the container holds a capability that
// makes them legitimate (Docker's default profile works the same way).
type seccompRule struct {
	names  []string
	unless string // capability that lifts the rule ("" = never lifted)
	errno  syscall.Errno
	args   []specs.LinuxSeccompArg
}

const cloneNewUser = syscall.CLONE_NEWUSER

// seccompRules is vessel's default filter: every syscall is allowed except
// these. They reach kernel interfaces that are not namespaced (keyrings,
// modules, the clock, swap, accounting, BPF, perf), or open a large attack
// surface without any capability check (userfaultfd, creating user
// namespaces). Most also need a capability the default set does not have:
// the filter is a second wall, and granting the capability lifts it.
var seccompRules = []seccompRule{
	{names: []string{"add_key", "keyctl", "request_key"}},
	{names: []string{"init_module", "finit_module", "delete_module"}, unless: "CAP_SYS_MODULE"},
	{names: []string{"kexec_load", "kexec_file_load", "reboot"}, unless: "CAP_SYS_BOOT"},
	{names: []string{"settimeofday", "clock_settime", "clock_adjtime", "stime"}, unless: "CAP_SYS_TIME"},
	{names: []string{"acct"}, unless: "CAP_SYS_PACCT"},
	{names: []string{"iopl", "ioperm"}, unless: "CAP_SYS_RAWIO"},
	{names: []string{"syslog"}, unless: "CAP_SYSLOG"},
	{names: []string{"open_by_handle_at", "name_to_handle_at"}, unless: "CAP_DAC_READ_SEARCH"},
	{names: []string{"userfaultfd"}, unless: "CAP_SYS_PTRACE"},
	{names: []string{"bpf", "perf_event_open", "lookup_dcookie", "quotactl", "swapon", "swapoff",
		"mount", "umount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
		"move_mount", "open_tree", "mount_setattr", "vm86", "vm86old", "nfsservctl", "uselib"}, unless: "CAP_SYS_ADMIN"},
	// New user namespaces: unshare(CLONE_NEWUSER) and clone(CLONE_NEWUSER);
	// clone3 hides its flags in memory, so it reports ENOSYS and libc
	// falls back to clone, where the flags can be checked.
	{names: []string{"unshare", "clone"}, unless: "CAP_SYS_ADMIN",
		args: []specs.LinuxSeccompArg{{Index: 0, Value: cloneNewUser, ValueTwo: cloneNewUser, Op: specs.OpMaskedEqual}}},
	{names: []string{"clone3"}, unless: "CAP_SYS_ADMIN", errno: syscall.ENOSYS},
}

// seccompProfile builds the filter for a container holding caps (its
// bounding set).
func seccompProfile(caps []string) *specs.LinuxSeccomp {
	held := map[string]bool{}
	for _, c := range caps {
		held[c] = true
	}
	p := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Architectures: seccompArches()}
	for _, r := range seccompRules {
		if r.unless != "" && held[r.unless] {
			continue
		}
		errno := r.errno
		if errno == 0 {
			errno = syscall.EPERM
		}
		ret := uint(errno)
		p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{
			Names: append([]string(nil), r.names...), Action: specs.ActErrno, ErrnoRet: &ret,
			Args: append([]specs.LinuxSeccompArg(nil), r.args...),
		})
	}
	return p
}

// seccompArches are the syscall ABIs a process on this machine can use.
func seccompArches() []specs.Arch {
	switch goruntime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil // the native ABI only
}
