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
