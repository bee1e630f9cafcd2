package manifest

import (
	"encoding/json"
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
		{"web", []string{}, "    capabilities: [] # learned\n"},
		{"agent", nil, "    capabilities: []\n"},
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
				if !s.Capabilities.Given || s.Capabilities.Names == nil {
					t.Errorf("set %s: the key was not written: %+v", tc.svc, s.Capabilities)
				}
			}
			if got := strings.Join(s.Capabilities.Names, ","); got != want {
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

// TestBuildCapabilities pins the capability semantics of system.yaml and
// the manifest (docs/manifest.md): no key, [] and none give none; a list
// gives exactly it; default gives the runtime's default set, written as
// the manifest always wrote it (no list, no noCapabilities).
func TestBuildCapabilities(t *testing.T) {
	src := `product: 6f1c1d0e-5b7a-4c1e-9a53-2d7c4f0a1b2c
version: 1
services:
  - {name: missing, image: a:1}
  - {name: empty, image: a:1, capabilities: []}
  - {name: none, image: a:1, capabilities: none}
  - {name: listed, image: a:1, capabilities: [net_raw, CAP_CHOWN]}
  - {name: dflt, image: a:1, capabilities: default}
`
	sys, err := ParseSystem("system.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Build(sys, newMem("a:1"), BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"missing": `"noCapabilities":true`, "empty": `"noCapabilities":true`, "none": `"noCapabilities":true`,
		"listed": `"capabilities":["CAP_NET_RAW","CAP_CHOWN"]`, "dflt": ``,
	}
	for _, s := range m.Services {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		got := string(b)
		if w := want[s.Name]; w != "" && !strings.Contains(got, w) {
			t.Errorf("service %s: %s has no %s", s.Name, got, w)
		}
		if s.Name == "dflt" && (strings.Contains(got, "apabilities") || s.NoCapabilities) {
			t.Errorf("default set written as %s", got)
		}
		if s.Name == "listed" && s.NoCapabilities {
			t.Errorf("listed service has noCapabilities")
		}
	}
	for _, bad := range []string{"capabilities: all", "capabilities: {a: 1}", "capabilities: [FLY]"} {
		y := "product: 6f1c1d0e-5b7a-4c1e-9a53-2d7c4f0a1b2c\nversion: 1\nservices:\n  - name: x\n    image: a:1\n    " + bad + "\n"
		sys, err := ParseSystem("system.yaml", []byte(y))
		if err == nil {
			_, err = Build(sys, newMem("a:1"), BuildOptions{})
		}
		if err == nil {
			t.Errorf("%s: accepted", bad)
		} else if !strings.Contains(err.Error(), "capabilit") && !strings.Contains(err.Error(), "line 6") {
			t.Errorf("%s: error does not say what: %v", bad, err)
		}
	}
	// A manifest cannot say none and list capabilities at once.
	m.Services[3].NoCapabilities = true
	if _, err := m.Marshal(); err == nil || !strings.Contains(err.Error(), "noCapabilities") {
		t.Errorf("noCapabilities with a list: %v", err)
	}
}

// TestOldManifestKeepsDefault: a manifest from before noCapabilities (no
// capabilities key) still parses, and means the default set (no
// noCapabilities after parsing).
func TestOldManifestKeepsDefault(t *testing.T) {
	old := `{"mediaType":"` + MediaType + `","product":"6f1c1d0e-5b7a-4c1e-9a53-2d7c4f0a1b2c","version":1,"services":[{"name":"web","image":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1},"restart":"always","network":"host"}]}`
	m, err := Parse([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if s := m.Services[0]; s.NoCapabilities || len(s.Capabilities) != 0 {
		t.Fatalf("old manifest changed meaning: %+v", s)
	}
}
