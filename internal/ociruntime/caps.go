package ociruntime

import (
	"fmt"
	"sort"
	"strings"
)

// capNumbers maps every Linux capability name this package knows (as of
// Linux 5.9, CAP_CHECKPOINT_RESTORE) to its bit number in /proc/PID/status.
var capNumbers = map[string]int{
	"CAP_CHOWN":              0,
	"CAP_DAC_OVERRIDE":       1,
	"CAP_DAC_READ_SEARCH":    2,
	"CAP_FOWNER":             3,
	"CAP_FSETID":             4,
	"CAP_KILL":               5,
	"CAP_SETGID":             6,
	"CAP_SETUID":             7,
	"CAP_SETPCAP":            8,
	"CAP_LINUX_IMMUTABLE":    9,
	"CAP_NET_BIND_SERVICE":   10,
	"CAP_NET_BROADCAST":      11,
	"CAP_NET_ADMIN":          12,
	"CAP_NET_RAW":            13,
	"CAP_IPC_LOCK":           14,
	"CAP_IPC_OWNER":          15,
	"CAP_SYS_MODULE":         16,
	"CAP_SYS_RAWIO":          17,
	"CAP_SYS_CHROOT":         18,
	"CAP_SYS_PTRACE":         19,
	"CAP_SYS_PACCT":          20,
	"CAP_SYS_ADMIN":          21,
	"CAP_SYS_BOOT":           22,
	"CAP_SYS_NICE":           23,
	"CAP_SYS_RESOURCE":       24,
	"CAP_SYS_TIME":           25,
	"CAP_SYS_TTY_CONFIG":     26,
	"CAP_MKNOD":              27,
	"CAP_LEASE":              28,
	"CAP_AUDIT_WRITE":        29,
	"CAP_AUDIT_CONTROL":      30,
	"CAP_SETFCAP":            31,
	"CAP_MAC_OVERRIDE":       32,
	"CAP_MAC_ADMIN":          33,
	"CAP_SYSLOG":             34,
	"CAP_WAKE_ALARM":         35,
	"CAP_BLOCK_SUSPEND":      36,
	"CAP_AUDIT_READ":         37,
	"CAP_PERFMON":            38,
	"CAP_BPF":                39,
	"CAP_CHECKPOINT_RESTORE": 40,
}

// defaultCaps is the set runc, crun, Docker and containerd give an
// unprivileged container.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// DefaultCapabilities returns the capabilities a container gets when its
// Config names none: the Docker/runc default set for an unprivileged
// container, in capability-number order. The slice is a fresh copy.
func DefaultCapabilities() []string {
	return sortCaps(append([]string(nil), defaultCaps...))
}

// AllCapabilities returns every capability name this package knows, in
// capability-number order.
func AllCapabilities() []string {
	all := make([]string, 0, len(capNumbers))
	for n := range capNumbers {
		all = append(all, n)
	}
	return sortCaps(all)
}

// NormalizeCapability turns "net_admin", "NET_ADMIN" or "cap_net_admin"
// into "CAP_NET_ADMIN". "all" (any case) becomes "ALL". An unknown name is
// an error that names it.
func NormalizeCapability(name string) (string, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if n == "ALL" {
		return n, nil
	}
	if !strings.HasPrefix(n, "CAP_") {
		n = "CAP_" + n
	}
	if _, ok := capNumbers[n]; !ok {
		return "", fmt.Errorf("unknown capability %q", name)
	}
	return n, nil
}

// CapabilityMask returns the bitmask of caps as the kernel shows it in
// /proc/PID/status (CapEff and friends).
func CapabilityMask(caps []string) (uint64, error) {
	var m uint64
	for _, c := range caps {
		n, err := NormalizeCapability(c)
		if err != nil {
			return 0, err
		}
		if n == "ALL" {
			for _, bit := range capNumbers {
				m |= 1 << bit
			}
			continue
		}
		m |= 1 << capNumbers[n]
	}
	return m, nil
}

// resolveCaps computes a container's capability set with Docker's rules:
// base is the Config's list (nil: the default set); "ALL" in add gives
// every capability except those dropped; "ALL" in drop gives exactly the
// added ones; otherwise drops are removed from base and adds appended.
func resolveCaps(base, add, drop []string) ([]string, error) {
	if base == nil {
		base = defaultCaps
	}
	norm := func(what string, in []string, allowAll bool) (map[string]bool, bool, error) {
		set := map[string]bool{}
		all := false
		for _, c := range in {
			n, err := NormalizeCapability(c)
			if err != nil {
				return nil, false, fmt.Errorf("%s: %w", what, err)
			}
			if n == "ALL" {
				if !allowAll {
					return nil, false, fmt.Errorf("%s: \"ALL\" is only allowed in cap-add and cap-drop", what)
				}
				all = true
				continue
			}
			set[n] = true
		}
		return set, all, nil
	}
	baseSet, _, err := norm("capabilities", base, false)
	if err != nil {
		return nil, err
	}
	addSet, addAll, err := norm("cap-add", add, true)
	if err != nil {
		return nil, err
	}
	dropSet, dropAll, err := norm("cap-drop", drop, true)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	switch {
	case addAll:
		for n := range capNumbers {
			if !dropSet[n] {
				out[n] = true
			}
		}
	case dropAll:
		out = addSet
	default:
		for n := range baseSet {
			if !dropSet[n] {
				out[n] = true
			}
		}
		for n := range addSet {
			out[n] = true
		}
	}
	list := make([]string, 0, len(out))
	for n := range out {
		list = append(list, n)
	}
	return sortCaps(list), nil
}

func sortCaps(c []string) []string {
	sort.Slice(c, func(i, j int) bool { return capNumbers[c[i]] < capNumbers[c[j]] })
	return c
}
