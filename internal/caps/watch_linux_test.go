package caps

import (
	"strings"
	"testing"
)

func TestServiceHint(t *testing.T) {
	refused := []Check{
		{Cap: "CAP_NET_RAW", Syscall: "socket", Comm: "ping", Count: 1},
		{Cap: "CAP_CHOWN", Syscall: "fchownat", Comm: "chown", Count: 2},
		{Cap: "CAP_NET_RAW", Syscall: "setsockopt", Comm: "ping", Count: 1},
	}
	for _, tc := range []struct {
		have []string
		want string
	}{
		{[]string{}, "grant it (capabilities: [CHOWN, NET_RAW] in system.yaml)"},
		{[]string{"CAP_SETUID", "CAP_NET_RAW"}, "grant it (capabilities: [CHOWN, SETUID, NET_RAW] in system.yaml)"},
		{nil, "grant it (add NET_RAW, CHOWN to its capabilities: in system.yaml (it has the default set))"},
	} {
		got := ServiceHint(refused, tc.have)
		if !strings.Contains(got, tc.want) ||
			!strings.HasPrefix(got, "the container was refused CAP_NET_RAW (socket by ping, 1x), CAP_CHOWN (fchownat by chown, 2x), CAP_NET_RAW (setsockopt by ping, 1x); ") {
			t.Errorf("have %v:\n%s\nwant it to contain %q", tc.have, got, tc.want)
		}
	}
	if h := ServiceHint(nil, []string{"CAP_CHOWN"}); h != "" {
		t.Errorf("nothing refused: %q", h)
	}
	if got := Hint(refused[:1]); !strings.Contains(got, "grant it (--cap-add NET_RAW, or capabilities: in system.yaml)") {
		t.Errorf("Hint: %s", got)
	}
}
