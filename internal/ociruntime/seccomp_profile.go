package ociruntime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ErrSeccompProfile is wrapped by ParseSeccompProfile errors.
var ErrSeccompProfile = errors.New("bad seccomp profile")

// MaxSeccompProfile bounds a profile file (Docker's default is 25 KB).
const MaxSeccompProfile = 1 << 20

// seccompFile is a seccomp profile in Docker's format (moby
// profiles/seccomp: defaultAction, archMap, syscalls with includes and
// excludes) or in the OCI runtime spec's (linux.seccomp: defaultAction,
// architectures, syscalls).
type seccompFile struct {
	DefaultAction   specs.LinuxSeccompAction `json:"defaultAction"`
	DefaultErrnoRet *uint                    `json:"defaultErrnoRet"`
	DefaultErrno    string                   `json:"defaultErrno"` // containers/common: the name
	Architectures   []specs.Arch             `json:"architectures"`
	ArchMap         []struct {
		Arch     specs.Arch   `json:"architecture"`
		SubArchs []specs.Arch `json:"subArchitectures"`
	} `json:"archMap"`
	Flags    []specs.LinuxSeccompFlag `json:"flags"`
	Syscalls []seccompFileRule        `json:"syscalls"`
	Comment  string                   `json:"comment"`
}

type seccompFileRule struct {
	Names    []string                 `json:"names"`
	Name     string                   `json:"name"`
	Action   specs.LinuxSeccompAction `json:"action"`
	ErrnoRet *uint                    `json:"errnoRet"`
	Errno    string                   `json:"errno"` // containers/common: the name
	Args     []specs.LinuxSeccompArg  `json:"args"`
	Comment  string                   `json:"comment"`
	Includes *seccompFilter           `json:"includes"`
	Excludes *seccompFilter           `json:"excludes"`
}

type seccompFilter struct {
	Arches    []string `json:"arches"`
	Caps      []string `json:"caps"`
	MinKernel string   `json:"minKernel"`
}

var seccompActions = []specs.LinuxSeccompAction{specs.ActKill, specs.ActKillProcess, specs.ActKillThread,
	specs.ActTrap, specs.ActErrno, specs.ActTrace, specs.ActAllow, specs.ActLog}

// ParseSeccompProfile reads a seccomp profile in Docker's or the OCI
// runtime spec's JSON format for a container holding caps (its bounding
// set). Docker's includes and excludes by capability, architecture and
// minKernel are decided here, as podman and docker do: a rule that
// includes minKernel "5.6" applies only on Linux 5.6 or later (the
// running kernel's release), one that excludes it only before.
// Unknown keys, actions, a minKernel not of the form "MAJOR.MINOR" and
// the notify action (which needs a listener vessel does not run) are
// refused.
func ParseSeccompProfile(b []byte, caps []string) (*specs.LinuxSeccomp, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, fmt.Errorf("seccomp profile: kernel release: %w", err)
	}
	kernel, err := parseKernelRelease(unix.ByteSliceToString(uts.Release[:]))
	if err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	return parseSeccompProfile(b, caps, kernel)
}

// kernelVersion is a kernel's MAJOR.MINOR, compared as Docker's
// minKernel does.
type kernelVersion [2]uint64

func (k kernelVersion) atLeast(o kernelVersion) bool {
	return k[0] > o[0] || k[0] == o[0] && k[1] >= o[1]
}

// parseKernelRelease reads MAJOR.MINOR from the start of a kernel release
// (uname -r: "6.1.0-28-amd64").
func parseKernelRelease(r string) (kernelVersion, error) {
	var k kernelVersion
	if _, err := fmt.Sscanf(r, "%d.%d", &k[0], &k[1]); err != nil {
		return k, fmt.Errorf("kernel release %q: %v", r, err)
	}
	return k, nil
}

// parseMinKernel reads a profile's minKernel: exactly "MAJOR.MINOR".
func parseMinKernel(s string) (kernelVersion, error) {
	var k kernelVersion
	major, minor, ok := strings.Cut(s, ".")
	var err1, err2 error
	if ok {
		k[0], err1 = strconv.ParseUint(major, 10, 32)
		k[1], err2 = strconv.ParseUint(minor, 10, 32)
	}
	if !ok || err1 != nil || err2 != nil || k == (kernelVersion{}) {
		return k, fmt.Errorf("%w: minKernel %q (want MAJOR.MINOR, such as \"5.6\")", ErrSeccompProfile, s)
	}
	return k, nil
}

func parseSeccompProfile(b []byte, caps []string, kernel kernelVersion) (*specs.LinuxSeccomp, error) {
	if len(b) > MaxSeccompProfile {
		return nil, fmt.Errorf("%w: %d bytes is more than the %d allowed", ErrSeccompProfile, len(b), MaxSeccompProfile)
	}
	var f seccompFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v (want Docker's or the OCI runtime spec's JSON format)", ErrSeccompProfile, err)
	}
	if !slices.Contains(seccompActions, f.DefaultAction) {
		return nil, fmt.Errorf("%w: defaultAction %q (want one of %v)", ErrSeccompProfile, f.DefaultAction, seccompActions)
	}
	p := &specs.LinuxSeccomp{DefaultAction: f.DefaultAction, DefaultErrnoRet: f.DefaultErrnoRet, Flags: f.Flags}
	if p.DefaultErrnoRet == nil && f.DefaultErrno != "" {
		n, err := errnoNamed(f.DefaultErrno)
		if err != nil {
			return nil, err
		}
		p.DefaultErrnoRet = &n
	}
	p.Architectures = append(p.Architectures, f.Architectures...)
	native := seccompArches()
	for _, m := range f.ArchMap {
		if len(native) == 0 || m.Arch == native[0] {
			p.Architectures = append(p.Architectures, m.Arch)
			p.Architectures = append(p.Architectures, m.SubArchs...)
		}
	}
	held := map[string]bool{}
	for _, c := range caps {
		held[c] = true
	}
	for i, r := range f.Syscalls {
		names := r.Names
		if r.Name != "" {
			names = append(names, r.Name)
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("%w: syscalls[%d] names no syscall", ErrSeccompProfile, i)
		}
		if !slices.Contains(seccompActions, r.Action) {
			return nil, fmt.Errorf("%w: syscalls[%d] (%s): action %q (want one of %v)", ErrSeccompProfile, i, names[0], r.Action, seccompActions)
		}
		in, ex := true, false
		for _, f := range []struct {
			filter *seccompFilter
			all    bool
			to     *bool
		}{{r.Includes, true, &in}, {r.Excludes, false, &ex}} {
			if f.filter == nil {
				continue
			}
			m, err := f.filter.matches(held, kernel, f.all)
			if err != nil {
				return nil, fmt.Errorf("syscalls[%d] (%s): %w", i, names[0], err)
			}
			*f.to = m
		}
		if !in || ex {
			continue
		}
		ret := r.ErrnoRet
		if ret == nil && r.Errno != "" {
			n, err := errnoNamed(r.Errno)
			if err != nil {
				return nil, fmt.Errorf("syscalls[%d] (%s): %w", i, names[0], err)
			}
			ret = &n
		}
		p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{Names: names, Action: r.Action, ErrnoRet: ret, Args: r.Args})
	}
	return p, nil
}

// matches reports whether the filter's conditions hold here: for includes
// every given condition must hold, for excludes any.
func (f *seccompFilter) matches(held map[string]bool, kernel kernelVersion, all bool) (bool, error) {
	var conds []bool
	if f.MinKernel != "" {
		want, err := parseMinKernel(f.MinKernel)
		if err != nil {
			return false, err
		}
		conds = append(conds, kernel.atLeast(want))
	}
	if len(f.Caps) > 0 {
		ok := true
		for _, c := range f.Caps {
			ok = ok && held[strings.ToUpper(c)]
		}
		if !all { // excludes: any listed capability held
			ok = false
			for _, c := range f.Caps {
				ok = ok || held[strings.ToUpper(c)]
			}
		}
		conds = append(conds, ok)
	}
	if len(f.Arches) > 0 {
		ok := false
		for _, a := range f.Arches {
			ok = ok || archName(a)
		}
		conds = append(conds, ok)
	}
	if len(conds) == 0 {
		return all, nil
	}
	for _, c := range conds {
		if all && !c {
			return false, nil
		}
		if !all && c {
			return true, nil
		}
	}
	return all, nil
}

// archName reports whether a Docker arch name (amd64, arm64, x86, ...) is
// this machine's.
func archName(a string) bool {
	native := seccompArches()
	if len(native) == 0 {
		return false
	}
	names := map[specs.Arch][]string{
		specs.ArchX86_64:  {"amd64", "x86_64"},
		specs.ArchAARCH64: {"arm64", "aarch64"},
	}
	return slices.Contains(names[native[0]], a)
}

// errnoNamed is the number of errno name (EPERM, ENOSYS...).
func errnoNamed(name string) (uint, error) {
	for e := syscall.Errno(1); e < 4096; e++ {
		if unix.ErrnoName(e) == name {
			return uint(e), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown errno %q", ErrSeccompProfile, name)
}
