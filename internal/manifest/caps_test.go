package manifest

import (
	"strings"
	"testing"
)

const capsSrc = `# the product
product: acme
version: 1
services:
  - name: web   # the web server
    image: nginx:1
    capabilities: [CHOWN, SETUID] # learned
    network: host
  - name: dns
    image: unbound:1
    capabilities:
      - NET_BIND_SERVICE
      - NET_RAW
    restart: on-failure
  - name: agent
    image: agent:4
    env: ["A=1"]`

func TestSetCapabilities(t *testing.T) {
	for _, tc := range []struct {
		svc  string
		caps []string
		want string // the changed lines
	}{
		{"web", []string{"NET_BIND_SERVICE"}, "    capabilities: [NET_BIND_SERVICE] # learned\n"},
		{"dns", []string{"NET_RAW"}, "    capabilities: [NET_RAW]\n"},
		{"agent", []string{"SYS_TIME", "CHOWN"}, "    capabilities: [SYS_TIME, CHOWN]\n"},
	} {
		out, err := SetCapabilities([]byte(capsSrc), tc.svc, tc.caps)
		if err != nil {
			t.Fatalf("%s: %v", tc.svc, err)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: no %q in\n%s", tc.svc, tc.want, out)
		}
		sys, err := ParseSystem("out", out)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sys.Services {
			want := map[string]string{"web": "CHOWN,SETUID", "dns": "NET_BIND_SERVICE,NET_RAW", "agent": ""}[s.Name]
			if s.Name == tc.svc {
				want = strings.Join(tc.caps, ",")
			}
			if got := strings.Join(s.Capabilities, ","); got != want {
				t.Errorf("set %s: service %s has %q, want %q", tc.svc, s.Name, got, want)
			}
		}
		// Every other line is kept.
		in, got := strings.Split(capsSrc, "\n"), strings.Split(string(out), "\n")
		kept := 0
		for _, l := range in {
			if strings.Contains(string(out), l) {
				kept++
			}
		}
		if kept < len(in)-2 || len(got) > len(in)+1 {
			t.Errorf("%s: other lines changed:\n%s", tc.svc, out)
		}
	}
	if _, err := SetCapabilities([]byte(capsSrc), "nope", nil); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown service: %v", err)
	}
}
