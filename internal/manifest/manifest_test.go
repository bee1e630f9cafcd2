package manifest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/layer"
)

const pid = "0f8fad5b-d9cb-469f-a165-70867728950e"

func fakeDigest(s string) digest.Digest {
	h := sha256.Sum256([]byte(s))
	return digest.NewDigestFromBytes(digest.SHA256, h[:])
}

// memImages is an in-memory store: name:tag -> image with one layer.
type memImages struct {
	tags      map[string]ocispec.Descriptor
	manifests map[digest.Digest]ocispec.Manifest
	blobs     map[digest.Digest]bool
}

func newMem(names ...string) *memImages {
	m := &memImages{tags: map[string]ocispec.Descriptor{}, manifests: map[digest.Digest]ocispec.Manifest{}, blobs: map[digest.Digest]bool{}}
	for _, n := range names {
		d := fakeDigest(n)
		ld := fakeDigest("layer " + n)
		m.tags[n] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 321}
		m.manifests[d] = ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Layers: []ocispec.Descriptor{{
			MediaType: "application/vnd.stacker.image.layer.squashfs+zstd", Digest: ld, Size: 4096,
			Annotations: map[string]string{layer.AnnotationVerityRootOld: fakeDigest("root " + n).Encoded()}}}}
		m.blobs[ld] = true
	}
	return m
}

func (m *memImages) Resolve(ref string) (ocispec.Descriptor, error) {
	if !strings.Contains(ref, ":") {
		ref += ":latest"
	}
	d, ok := m.tags[ref]
	if !ok {
		return d, fmt.Errorf("image %s: not found", ref)
	}
	return d, nil
}

func (m *memImages) Manifest(d digest.Digest) (ocispec.Manifest, error) {
	om, ok := m.manifests[d]
	if !ok {
		return om, fmt.Errorf("blob %s: not found", d)
	}
	return om, nil
}

func (m *memImages) HasBlob(d digest.Digest) bool { return m.blobs[d] }

const systemYAML = `# example
product: acme
version: 7
hostfs: hostfs:1.0
services:
  - name: web
    image: nginx:1.25
    command: /usr/sbin/nginx
    args: ["-g", "daemon off;"]
    env:
      B: two
      A: one
    user: "101:101"
    restart: on-failure
    capabilities: [net_bind_service]
    network: private
    volumes: ["cache:/var/cache/nginx"]
    readonly: true
  - name: agent
    image: agent
    network: host
`

func TestBuild(t *testing.T) {
	sys, err := ParseSystem("system.yaml", []byte(systemYAML))
	if err != nil {
		t.Fatal(err)
	}
	images := newMem("hostfs:1.0", "nginx:1.25", "agent:latest")
	if _, err := Build(sys, images, BuildOptions{}); !errors.Is(err, ErrProductName) || strings.Contains(err.Error(), "--") {
		t.Fatalf("a product name without an ID: %v", err)
	}
	m, err := Build(sys, images, BuildOptions{ProductID: strings.ToUpper(pid)})
	if err != nil {
		t.Fatal(err)
	}
	web, _ := m.Service("web")
	if m.Product != pid || m.ProductName != "acme" || m.Version != 7 || m.Hostfs.Digest != fakeDigest("hostfs:1.0") ||
		web.Image.Digest != fakeDigest("nginx:1.25") || web.Network != NetworkPrivate || web.Restart != RestartOnFailure ||
		strings.Join(web.Env, ",") != "A=one,B=two" || web.Capabilities[0] != "CAP_NET_BIND_SERVICE" ||
		len(web.Ports) != 0 || web.Command[0] != "/usr/sbin/nginx" || !web.ReadOnly {
		t.Fatalf("unexpected manifest %+v", m)
	}
	agent, _ := m.Service("agent")
	if agent.Restart != RestartAlways || agent.Network != NetworkHost {
		t.Fatalf("defaults: %+v", agent)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := m2.Marshal()
	if !bytes.Equal(b, b2) {
		t.Fatal("marshal is not stable across a parse")
	}
	if err := CheckImages(m2, images); err != nil {
		t.Fatal(err)
	}
	// A tag that is not in the store.
	sys.Services[1].Image = "missing:1"
	if _, err := Build(sys, images, BuildOptions{ProductID: pid}); err == nil || !strings.Contains(err.Error(), "missing:1") {
		t.Fatalf("missing image: %v", err)
	}
}

// vessel up cannot publish ports yet: build refuses them rather than sign
// a manifest every machine would refuse (issue 22).
func TestBuildRefusesPorts(t *testing.T) {
	sys, err := ParseSystem("system.yaml", []byte(strings.Replace(systemYAML, "    network: private\n", "    ports: [\"8080:80\", \"53/udp\"]\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(sys, newMem("hostfs:1.0", "nginx:1.25", "agent:latest"), BuildOptions{ProductID: pid})
	if !errors.Is(err, ErrPortsUnsupported) || !strings.Contains(err.Error(), `service "web"`) {
		t.Fatalf("ports: %v, want ErrPortsUnsupported naming the service", err)
	}
}

func TestBuildRejectsImageWithoutVerity(t *testing.T) {
	images := newMem("nginx:1.25")
	d := fakeDigest("nginx:1.25")
	om := images.manifests[d]
	om.Layers[0].Annotations = map[string]string{"other": "x"}
	images.manifests[d] = om
	sys := &System{Product: pid, Version: 1, Services: []ServiceSpec{{Name: "web", Image: "nginx:1.25"}}}
	if _, err := Build(sys, images, BuildOptions{}); !errors.Is(err, ErrImage) {
		t.Fatalf("layer without verity root: %v", err)
	}
}

// The root hash rules are layer's (layer.VerityRoot): Build once accepted
// 128 hex digits and upper case here, which the mount path refuses.
func TestBuildRejectsBadRootHash(t *testing.T) {
	good := fakeDigest("root").Encoded()
	for name, root := range map[string]string{
		"sha512 length": good + good,
		"short":         good[:60],
		"upper case":    strings.ToUpper(good),
		"not hex":       strings.Repeat("g", 64),
	} {
		images := newMem("nginx:1.25")
		d := fakeDigest("nginx:1.25")
		om := images.manifests[d]
		om.Layers[0].Annotations = map[string]string{layer.AnnotationVerityRoot: root}
		images.manifests[d] = om
		sys := &System{Product: pid, Version: 1, Services: []ServiceSpec{{Name: "web", Image: "nginx:1.25"}}}
		_, err := Build(sys, images, BuildOptions{})
		if !errors.Is(err, ErrImage) || !errors.Is(err, layer.ErrBadRootHash) {
			t.Errorf("%s: %v, want ErrImage and layer.ErrBadRootHash", name, err)
			continue
		}
		if l := om.Layers[0].Digest.String(); !strings.Contains(err.Error(), l) || !strings.Contains(err.Error(), "nginx:1.25") {
			t.Errorf("%s: %v does not name the image and layer %s", name, err, l)
		}
	}
}

func TestParseSystemErrors(t *testing.T) {
	for name, c := range map[string]struct{ yaml, want string }{
		"unknown top key":     {"product: a\nversion: 1\nservice: []\n", `system.yaml:3: unknown key "service" in the top level`},
		"unknown service key": {"product: a\nversion: 1\nservices:\n  - name: web\n    image: x\n    imagee: y\n", `system.yaml:6: unknown key "imagee" in service "web"`},
		"duplicate key":       {"product: a\nversion: 1\nversion: 2\n", `"version" already defined`},
		"two documents":       {"product: a\n---\nproduct: b\n", "more than one YAML document"},
		"bad version":         {"product: a\nversion: one\n", "line 2"},
		"alias":               {"product: &p a\nhostfs: *p\n", "aliases are not allowed"},
		"empty":               {"", "empty file"},
		"not a mapping":       {"- a\n", "must be a mapping"},
		"bad env":             {"services:\n  - name: a\n    env: [NOEQUALS]\n", "KEY=VALUE"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseSystem("system.yaml", []byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func validManifest() *Manifest {
	return &Manifest{MediaType: MediaType, Product: pid, Version: 1, Services: []Service{{
		Name: "web", Restart: RestartAlways, Network: NetworkPrivate,
		Image: Image{MediaType: ocispec.MediaTypeImageManifest, Digest: fakeDigest("x"), Size: 10}}}}
}

func TestValidate(t *testing.T) {
	if err := validManifest().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(m *Manifest){
		"media type":     func(m *Manifest) { m.MediaType = "x" },
		"product":        func(m *Manifest) { m.Product = "acme" },
		"upper product":  func(m *Manifest) { m.Product = strings.ToUpper(pid) },
		"version":        func(m *Manifest) { m.Version = 0 },
		"nothing":        func(m *Manifest) { m.Services = nil },
		"service name":   func(m *Manifest) { m.Services[0].Name = "Web" },
		"duplicate name": func(m *Manifest) { m.Services = append(m.Services, m.Services[0]) },
		"digest":         func(m *Manifest) { m.Services[0].Image.Digest = "sha256:abc" },
		"image size":     func(m *Manifest) { m.Services[0].Image.Size = 0 },
		"restart":        func(m *Manifest) { m.Services[0].Restart = "sometimes" },
		"network":        func(m *Manifest) { m.Services[0].Network = "bridge" },
		"capability":     func(m *Manifest) { m.Services[0].Capabilities = []string{"CAP_EVERYTHING"} },
		"env":            func(m *Manifest) { m.Services[0].Env = []string{"1X=2"} },
		"env dup":        func(m *Manifest) { m.Services[0].Env = []string{"X=1", "X=2"} },
		"user":           func(m *Manifest) { m.Services[0].User = "root;rm" },
		"port proto":     func(m *Manifest) { m.Services[0].Ports = []Port{{1, 2, "sctp"}} },
		"port on host":   func(m *Manifest) { m.Services[0].Network = NetworkHost; m.Services[0].Ports = []Port{{1, 2, "tcp"}} },
		"volume path":    func(m *Manifest) { m.Services[0].Volumes = []Volume{{"data", "relative"}} },
		"volume dotdot":  func(m *Manifest) { m.Services[0].Volumes = []Volume{{"data", "/a/../b"}} },
		"command nul":    func(m *Manifest) { m.Services[0].Command = []string{"/bin/x\x00y"} },
		"userns":         func(m *Manifest) { m.Services[0].UserNS = "yes" },
		"userns group":   func(m *Manifest) { m.Services[0].UserNS = "group:" },
		"userns name":    func(m *Manifest) { m.Services[0].UserNS = "group:Data/x" },
		"host port twice": func(m *Manifest) {
			s := m.Services[0]
			s.Name, s.Ports = "web2", []Port{{80, 80, "tcp"}}
			m.Services[0].Ports = []Port{{80, 8080, "tcp"}}
			m.Services = append(m.Services, s)
		},
	} {
		t.Run(name, func(t *testing.T) {
			m := validManifest()
			f(m)
			if err := m.Validate(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
}

func TestParseStrict(t *testing.T) {
	b, err := validManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for name, in := range map[string]string{
		"duplicate key":  strings.Replace(s, `"version": 1`, `"version": 1, "version": 1`, 1),
		"case variant":   strings.Replace(s, `"version"`, `"Version"`, 1),
		"escaped dup":    strings.Replace(s, `"version": 1`, `"version": 1, "\u0076ersion": 2`, 1),
		"unknown key":    strings.Replace(s, `"version": 1`, `"version": 1, "x": null`, 1),
		"trailing":       s + "[]",
		"oversize":       s + strings.Repeat(" ", MaxSize),
		"invalid utf-8":  strings.Replace(s, `"web"`, "\"w\xffb\"", 1),
		"version string": strings.Replace(s, `"version": 1`, `"version": "1"`, 1),
		"version float":  strings.Replace(s, `"version": 1`, `"version": 1e0`, 1),
		"null services":  strings.Replace(s, `"version": 1,`, `"version": 1, "hostfs": null,`, 1) + "x",
	} {
		t.Run(name, func(t *testing.T) {
			if in == s {
				t.Fatal("case did not change the input")
			}
			if _, err := Parse([]byte(in)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
}

// The example in the repository parses and builds.
func TestExampleSystemYAML(t *testing.T) {
	b, err := os.ReadFile("../../examples/system.yaml")
	if err != nil {
		t.Skip("examples/system.yaml not present")
	}
	sys, err := ParseSystem("examples/system.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	images := newMem("acme-hostfs:2026.11", "nginx:1.25", "unbound:1.19", "acme-agent:4")
	if _, err := Build(sys, images, BuildOptions{ProductID: pid}); err != nil {
		t.Fatal(err)
	}
}

// The lazily compiled expressions compile (a typo would panic on first
// use instead of at start-up).
func TestLazyRegexpsCompile(t *testing.T) {
	for _, l := range []*lazyRegexpT{uuidRE, svcNameRE, envKeyRE, volNameRE, userRE, capRE} {
		if _, err := regexp.Compile(l.src); err != nil {
			t.Errorf("%q: %v", l.src, err)
		}
	}
}

// The userns key goes from system.yaml into the signed manifest; bad
// values are refused at build.
func TestBuildUserNS(t *testing.T) {
	for _, v := range []string{"auto", "group:data"} {
		sys, err := ParseSystem("system.yaml", []byte(strings.Replace(systemYAML, "    readonly: true\n", "    readonly: true\n    userns: "+v+"\n", 1)))
		if err != nil {
			t.Fatal(err)
		}
		m, err := Build(sys, newMem("hostfs:1.0", "nginx:1.25", "agent:latest"), BuildOptions{ProductID: pid})
		if err != nil {
			t.Fatal(err)
		}
		web, _ := m.Service("web")
		agent, _ := m.Service("agent")
		if web.UserNS != v || agent.UserNS != "" {
			t.Errorf("userns %s: web %q agent %q", v, web.UserNS, agent.UserNS)
		}
		b, _ := m.Marshal()
		if !bytes.Contains(b, []byte(`"userns": "`+v+`"`)) || bytes.Count(b, []byte(`"userns"`)) != 1 {
			t.Errorf("manifest JSON: %s", b)
		}
	}
	sys, err := ParseSystem("system.yaml", []byte(strings.Replace(systemYAML, "    readonly: true\n", "    readonly: true\n    userns: yes-please\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(sys, newMem("hostfs:1.0", "nginx:1.25", "agent:latest"), BuildOptions{ProductID: pid}); err == nil || !strings.Contains(err.Error(), `userns "yes-please": want auto or group:NAME`) {
		t.Errorf("bad userns: %v", err)
	}
}
