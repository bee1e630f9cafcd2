package ociruntime

import (
	"errors"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseSeccompProfileDockerFormat(t *testing.T) {
	in := `{
	  "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
	  "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
	              {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
	  "syscalls": [
	    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
	    {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
	    {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
	    {"name": "getpid", "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}}
	  ]}`
	names := func(p *specs.LinuxSeccomp) string {
		var out []string
		for _, s := range p.Syscalls {
			out = append(out, strings.Join(s.Names, ","))
		}
		return strings.Join(out, " ")
	}
	p, err := ParseSeccompProfile([]byte(in), []string{"CAP_CHOWN"})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(p); got != "read,write reboot getpid" {
		t.Errorf("without CAP_SYS_ADMIN: %q", got)
	}
	if p.DefaultAction != specs.ActErrno || p.DefaultErrnoRet == nil || *p.DefaultErrnoRet != 1 {
		t.Errorf("default %v %v", p.DefaultAction, p.DefaultErrnoRet)
	}
	if native := seccompArches(); len(native) > 0 && (len(p.Architectures) == 0 || p.Architectures[0] != native[0]) {
		t.Errorf("architectures %v: want this machine's first", p.Architectures)
	}
	p, err = ParseSeccompProfile([]byte(in), []string{"CAP_SYS_ADMIN"})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(p); got != "read,write mount getpid" {
		t.Errorf("with CAP_SYS_ADMIN: %q", got)
	}
}

func TestParseSeccompProfileRefuses(t *testing.T) {
	for _, in := range []string{
		``,
		`{"defaultAction": "SCMP_ACT_ALLOW", "sycalls": []}`,
		`{"defaultAction": "ALLOW"}`,
		`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_NOTIFY"}]}`,
		`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}`,
		`not json`,
	} {
		if _, err := ParseSeccompProfile([]byte(in), nil); !errors.Is(err, ErrSeccompProfile) {
			t.Errorf("%q: %v, want ErrSeccompProfile", in, err)
		}
	}
}

// podman's own default profile (containers-common) parses.
func TestParseSeccompProfilePodmanDefault(t *testing.T) {
	b, err := os.ReadFile("/usr/share/containers/seccomp.json")
	if err != nil {
		t.Skip("containers-common's seccomp.json is not installed")
	}
	p, err := ParseSeccompProfile(b, []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Syscalls) < 3 || len(p.Architectures) == 0 {
		t.Fatalf("parsed %d rules, %d architectures", len(p.Syscalls), len(p.Architectures))
	}
}

// minKernel, as podman and docker read it: a rule that includes it
// applies from that kernel on, one that excludes it only before; the
// comparison is by MAJOR.MINOR of the running kernel's release.
func TestParseSeccompProfileMinKernel(t *testing.T) {
	in := `{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
	    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
	    {"names": ["pidfd_open"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.3"}},
	    {"names": ["close_range"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.9"}},
	    {"names": ["old_way"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "5.9"}},
	    {"names": ["admin_new"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "5.3"}}
	  ]}`
	names := func(p *specs.LinuxSeccomp) string {
		var out []string
		for _, s := range p.Syscalls {
			out = append(out, strings.Join(s.Names, ","))
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		release string
		caps    []string
		want    string
	}{
		{"4.19.0-27-amd64", nil, "read old_way"},
		{"5.3.0", nil, "read pidfd_open old_way"},
		{"5.8.18", []string{"CAP_SYS_ADMIN"}, "read pidfd_open old_way admin_new"},
		{"5.9.0-rc1", nil, "read pidfd_open close_range"},
		{"5.10.0-28-amd64", nil, "read pidfd_open close_range"},
		{"6.1.0", []string{"CAP_SYS_ADMIN"}, "read pidfd_open close_range admin_new"},
		{"10.0", nil, "read pidfd_open close_range"}, // 10 > 5 as numbers, not text
	} {
		k, err := parseKernelRelease(c.release)
		if err != nil {
			t.Fatal(err)
		}
		p, err := parseSeccompProfile([]byte(in), c.caps, k)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(p); got != c.want {
			t.Errorf("kernel %s, caps %v: %q, want %q", c.release, c.caps, got, c.want)
		}
	}
	// The running kernel: this machine's answer, from uname.
	p, err := ParseSeccompProfile([]byte(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(p); !strings.HasPrefix(got, "read pidfd_open") {
		t.Errorf("on this kernel (5.3 or later): %q", got)
	}
	for _, bad := range []string{"5", "5.x", "5.6.1", "v5.6", "0.0", "-1.2"} {
		prof := `{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "` + bad + `"}}]}`
		if _, err := ParseSeccompProfile([]byte(prof), nil); !errors.Is(err, ErrSeccompProfile) || !strings.Contains(err.Error(), "minKernel") {
			t.Errorf("minKernel %q: %v, want a minKernel ErrSeccompProfile", bad, err)
		}
	}
}
