package reference

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

var (
	hexA = strings.Repeat("a", 64)
	dA   = digest.Digest("sha256:" + hexA)
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ref
		str  string // String(); "" means in
	}{
		// Store: NAME[:TAG] (tag latest by default), NAME@DIGEST, DIGEST.
		{"app", Ref{Transport: Store, Name: "app", Tag: "latest"}, "app:latest"},
		{"app:1", Ref{Transport: Store, Name: "app", Tag: "1"}, ""},
		{"acme/web:v1.2_rc-3", Ref{Transport: Store, Name: "acme/web", Tag: "v1.2_rc-3"}, ""},
		{"a.b__c-d---e/f:X", Ref{Transport: Store, Name: "a.b__c-d---e/f", Tag: "X"}, ""},
		{"localhost:5000/app", Ref{Transport: Store, Name: "localhost:5000/app", Tag: "latest"}, "localhost:5000/app:latest"},
		{"h:5/a:b", Ref{Transport: Store, Name: "h:5/a", Tag: "b"}, ""},
		{"app@" + dA.String(), Ref{Transport: Store, Name: "app", Digest: dA}, ""},
		{dA.String(), Ref{Transport: Store, Digest: dA}, ""},
		{"foo:x.tar", Ref{Transport: Store, Name: "foo", Tag: "x.tar"}, ""},                  // skopeo: unknown transport "foo"; vessel: a store tag
		{"tarball", Ref{Transport: Store, Name: "tarball", Tag: "latest"}, "tarball:latest"}, // a stacker example's image name
		{"dir:x", Ref{Transport: Store, Name: "dir", Tag: "x"}, ""},
		// oci: the directory ends at the first colon, as skopeo and stacker split it.
		{"oci:./lay", Ref{Transport: OCI, Dir: "./lay"}, ""},
		{"oci:lay:", Ref{Transport: OCI, Dir: "lay"}, "oci:lay"},
		{"oci:/srv/lay:v1", Ref{Transport: OCI, Dir: "/srv/lay", Tag: "v1"}, ""},
		{"oci:/srv/a:b/lay:v1", Ref{Transport: OCI, Dir: "/srv/a", Tag: "b/lay:v1"}, ""},
		{"oci:lay:Upper_OK", Ref{Transport: OCI, Dir: "lay", Tag: "Upper_OK"}, ""},
		{"oci:lay@sha256:" + hexA, Ref{Transport: OCI, Dir: "lay@sha256", Tag: hexA}, ""}, // as skopeo: dir "lay@sha256"
		{"oci://x", Ref{Transport: OCI, Dir: "//x"}, ""},
		// archives: PATH ends at the first colon, as containers/image splits it.
		{"oci-archive:/tmp/x.tar", Ref{Transport: OCIArchive, Dir: "/tmp/x.tar"}, ""},
		{"oci-archive:x.tar:v1:a", Ref{Transport: OCIArchive, Dir: "x.tar", Tag: "v1:a"}, ""},
		{"docker-archive:/tmp/x.tar", Ref{Transport: DockerArchive, Dir: "/tmp/x.tar"}, ""},
		{"docker-archive:x.tar:busybox", Ref{Transport: DockerArchive, Dir: "x.tar", Host: "docker.io", Name: "library/busybox", Tag: "latest"}, "docker-archive:x.tar:docker.io/library/busybox:latest"},
		{"docker-archive:x.tar:localhost:5000/acme/app:1", Ref{Transport: DockerArchive, Dir: "x.tar", Host: "localhost:5000", Name: "acme/app", Tag: "1"}, ""},
		// docker: containers/image defaults.
		{"docker://busybox", Ref{Transport: Docker, Host: "docker.io", Name: "library/busybox", Tag: "latest"}, "docker://docker.io/library/busybox:latest"},
		{"docker://acme/web:1", Ref{Transport: Docker, Host: "docker.io", Name: "acme/web", Tag: "1"}, "docker://docker.io/acme/web:1"},
		{"docker://docker.io/busybox", Ref{Transport: Docker, Host: "docker.io", Name: "library/busybox", Tag: "latest"}, "docker://docker.io/library/busybox:latest"},
		{"docker://index.docker.io/library/busybox:1", Ref{Transport: Docker, Host: "docker.io", Name: "library/busybox", Tag: "1"}, "docker://docker.io/library/busybox:1"},
		{"docker://localhost/app", Ref{Transport: Docker, Host: "localhost", Name: "app", Tag: "latest"}, "docker://localhost/app:latest"},
		{"docker://127.0.0.1:5000/acme/app:1", Ref{Transport: Docker, Host: "127.0.0.1:5000", Name: "acme/app", Tag: "1"}, ""},
		{"docker://[::1]:5000/app:1", Ref{Transport: Docker, Host: "[::1]:5000", Name: "app", Tag: "1"}, ""},
		{"docker://Reg.Example.com/a/b@" + dA.String(), Ref{Transport: Docker, Host: "Reg.Example.com", Name: "a/b", Digest: dA}, ""},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		str := tc.str
		if str == "" {
			str = tc.in
		}
		if got.String() != str {
			t.Errorf("Parse(%q).String() = %q, want %q", tc.in, got.String(), str)
		}
		if again, err := Parse(got.String()); err != nil || again != got {
			t.Errorf("Parse(%q) = %+v, %v: does not round-trip", got.String(), again, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		in, problem string
		unsupported bool
	}{
		// The strings of issue 22: a transport vessel does not support, upper
		// case, a path that climbs.
		{"docker-daemon:busybox:latest", `unsupported transport "docker-daemon"`, true},
		{"docker-archive:", "no archive path", false},
		{"docker-archive:x.tar:Busybox", "lower case", false},
		{"docker-archive:x.tar:busybox@" + dA.String(), "RepoTags", false}, // containers/image: digests are not supported
		{"oci-archive:", "no archive path", false},
		{"oci-archive:x.tar:bad tag", `layout tag "bad tag"`, false},
		{"oci-archive", "reserved", false},
		{"docker-archive", "reserved", false},
		{"dir:/tmp/x", `unsupported transport "dir"`, true},
		{"dir:./x", `unsupported transport "dir"`, true},
		{"tarball:../x.tar", `unsupported transport "tarball"`, true},
		{"containers-storage:busybox", `unsupported transport "containers-storage"`, true},
		{"docker:busybox", `unsupported transport "docker"`, true}, // skopeo: "does not start with //"
		{"stacker://img/path", `unsupported transport "stacker"`, true},
		{"ftp://x/y", `unsupported transport "ftp"`, true},
		{"foo:/tmp/x", `unsupported transport "foo"`, true},
		{"UPPER:1", "names must be lower case", false},
		{"../../etc:1", `path component ".."`, false},
		{"/etc:1", "starts with '/'", false},
		{"a//b", "empty path component", false},
		{"a/", "empty path component", false},
		{"a..b", `path component "a..b"`, false},
		{"-a", `path component "-a"`, false},
		{"a b", `path component "a b"`, false},
		{"", "empty", false},
		{":x", "no image name", false},
		{"a:", "empty tag", false},
		{"a:bad tag", `tag "bad tag"`, false},
		{"a:.x", `tag ".x"`, false},
		{"a:" + strings.Repeat("x", 129), "more than 128", false},
		{strings.Repeat("a", 256), "more than 255", false},
		{"a@sha256:00", "digest", false},
		{"a@sha512:" + strings.Repeat("a", 128), "only sha256", false},
		{"a@sha256:" + strings.ToUpper(hexA), "digest", false},
		{"a:1@" + dA.String(), "a tag and a digest together", false},
		{"sha256:abc", "digest", false},
		{"sha256", "reserved", false},
		{"docker", "reserved", false}, // docker:latest would name a transport
		{"oci", "reserved", false},
		{"oci:", "no layout directory", false},
		{"oci::v1", "no layout directory", false},
		{"oci:lay:bad tag", `layout tag "bad tag"`, false},
		{"oci:lay:@" + dA.String(), `layout tag "@sha256`, false}, // skopeo 1.9: "Invalid image @sha256:..."
		{"docker://", "no repository", false},
		{"docker://reg.example.com/UPPER", "lower case", false},
		{"docker://reg.example.com/a:b:c", `path component "a:b"`, false},
		{"docker://reg.example.com/a@sha256:12", "digest", false},
		{"docker://reg.example.com/a:1@" + dA.String(), "a tag and a digest together", false},
		{"docker://reg.example.com/../x", `path component ".."`, false},
		{"docker://bad_host.com/x", "registry host", false},
		{"docker://reg.example.com/" + strings.Repeat("a", 250), "more than 255", false},
	} {
		_, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) accepted", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.problem) || !strings.Contains(err.Error(), "image reference") {
			t.Errorf("Parse(%q): %v, want it to say %q", tc.in, err, tc.problem)
		}
		if errors.Is(err, ErrUnsupportedTransport) != tc.unsupported || errors.Is(err, ErrInvalid) == tc.unsupported {
			t.Errorf("Parse(%q): %v: unsupported transport = %v, want %v", tc.in, err, errors.Is(err, ErrUnsupportedTransport), tc.unsupported)
		}
		var e *Error
		if !errors.As(err, &e) || e.Input != tc.in {
			t.Errorf("Parse(%q): %v does not name its input", tc.in, err)
		}
	}
}

func TestParseLayout(t *testing.T) {
	r, err := ParseLayout("/srv/a:b:c")
	if err != nil || r != (Ref{Transport: OCI, Dir: "/srv/a", Tag: "b:c"}) {
		t.Errorf("ParseLayout = %+v, %v", r, err)
	}
}

// The docker:// split agrees with go-containerregistry's name package, an
// independent implementation of the same distribution reference grammar.
func TestDockerAgreesWithGoContainerregistry(t *testing.T) {
	for _, s := range []string{
		"busybox", "busybox:1.36", "acme/web:1", "docker.io/busybox", "index.docker.io/library/busybox:1",
		"localhost/app", "localhost:5000/app:v1", "127.0.0.1:5000/acme/app:1", "reg.example.com/a/b/c@" + dA.String(),
		"reg.example.com:443/a.b/c__d/e---f:T_1.x-y",
	} {
		ours, err := Parse(DockerPrefix + s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		theirs, err := name.ParseReference(s, name.StrictValidation)
		if err != nil {
			// StrictValidation wants an explicit tag or digest.
			theirs, err = name.ParseReference(s)
		}
		if err != nil {
			t.Errorf("go-containerregistry: %s: %v", s, err)
			continue
		}
		host := theirs.Context().RegistryStr()
		if host == name.DefaultRegistry {
			host = DockerHub // ggcr calls docker.io index.docker.io
		}
		id := theirs.Identifier()
		if ours.Host != host || ours.Name != theirs.Context().RepositoryStr() || (ours.Tag+ours.Digest.String()) != id {
			t.Errorf("%s: ours %s %s %s%s, go-containerregistry %s %s %s", s, ours.Host, ours.Name, ours.Tag, ours.Digest, host, theirs.Context().RepositoryStr(), id)
		}
	}
	for _, s := range []string{"UPPER/x", "a//b", "-a/b", "a:b:c", "a@sha256:12"} {
		if _, err := name.ParseReference(s, name.StrictValidation); err == nil {
			t.Errorf("go-containerregistry accepts %s: the test's premise is wrong", s)
		}
		if _, err := Parse(DockerPrefix + s); err == nil {
			t.Errorf("docker://%s: accepted; go-containerregistry refuses it", s)
		}
	}
}

// skopeoRefRE finds the reference name skopeo looked for in an OCI layout.
var skopeoRefRE = regexp.MustCompile(`no descriptor found for reference \\"(.*?)\\"`)

// The oci: split agrees with skopeo's (containers/image's oci transport):
// `skopeo inspect oci:DIR:TAG` on an empty layout fails with "no descriptor
// found for reference "TAG"", which shows where it split; a tag it refuses
// fails with "Invalid image TAG". Checked with skopeo 1.9.3 (Debian bookworm).
func TestLayoutAgreesWithSkopeo(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo is not installed (Debian package skopeo): cannot compare the oci: split")
	}
	dir := t.TempDir()
	lay := filepath.Join(dir, "lay")
	if err := os.MkdirAll(filepath.Join(lay, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(lay, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	os.WriteFile(filepath.Join(lay, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644)
	for _, tag := range []string{"v1", "a:b", "b/lay:v1", "Upper_OK", "x@y", "bad tag", "@" + dA.String(), "-x", "a::b"} {
		s := "oci:" + lay + ":" + tag
		ours, ourErr := Parse(s)
		out, err := exec.Command("skopeo", "inspect", "--raw", s).CombinedOutput()
		if err == nil {
			t.Fatalf("skopeo inspect %s succeeded on an empty layout: %s", s, out)
		}
		m := skopeoRefRE.FindSubmatch(out)
		switch {
		case m != nil && ourErr != nil:
			t.Errorf("%s: skopeo reads tag %q, we refuse it: %v", s, m[1], ourErr)
		case m != nil && (ours.Dir != lay || ours.Tag != string(m[1])):
			t.Errorf("%s: skopeo splits dir %s tag %q, we split dir %s tag %q", s, lay, m[1], ours.Dir, ours.Tag)
		case m == nil && ourErr == nil:
			t.Errorf("%s: skopeo refuses it (%s), we accept %+v", s, strings.TrimSpace(string(out)), ours)
		}
	}
}

// Transports: skopeo refuses unknown ones with `unknown transport "X"`
// (skopeo 1.9.3: `Invalid image name "stacker://x/y", unknown transport
// "stacker"`); vessel names the same transport, and also refuses the
// containers/image transports it does not implement.
func TestUnsupportedTransportLikeSkopeo(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo is not installed (Debian package skopeo)")
	}
	for _, tc := range []struct{ in, transport string }{{"stacker://x/y", "stacker"}, {"ftp://x/y", "ftp"}, {"foo:/tmp/x", "foo"}} {
		out, _ := exec.Command("skopeo", "inspect", "--raw", tc.in).CombinedOutput()
		want := `unknown transport \"` + tc.transport + `\"`
		if !strings.Contains(string(out), want) {
			t.Errorf("skopeo inspect %s: %s, want %s", tc.in, out, want)
		}
		_, err := Parse(tc.in)
		if !errors.Is(err, ErrUnsupportedTransport) || !strings.Contains(err.Error(), `unsupported transport "`+tc.transport+`"`) {
			t.Errorf("Parse(%s): %v", tc.in, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"app", "app:1", "localhost:5000/a:b", "app@" + dA.String(), dA.String(), "oci:/srv/a:b/c:d", "oci:x",
		"oci-archive:x.tar:v1", "docker-archive:x.tar", "docker-archive:x.tar:busybox",
		"docker://busybox", "docker://127.0.0.1:5000/acme/app:1", "docker://reg.example.com/a@" + dA.String(), "docker-archive:/x", "UPPER:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Input != s {
				t.Fatalf("Parse(%q): error %v is not an *Error naming the input", s, err)
			}
			return
		}
		again, err := Parse(r.String())
		if err != nil || again != r {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, r, r.String(), again, err)
		}
		if (r.Transport == Store || r.Transport == Docker) && (r.Tag == "") == (r.Digest == "") {
			t.Fatalf("%q -> %+v: want exactly one of tag and digest", s, r)
		}
	})
}
