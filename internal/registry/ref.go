package registry

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Reference names an image in a registry: HOST/REPO[:TAG|@DIGEST].
type Reference struct {
	Host   string        // registry host[:port], e.g. 127.0.0.1:5000
	Repo   string        // repository path, e.g. acme/web
	Tag    string        // empty when Digest is set or no tag was given
	Digest digest.Digest // empty unless pinned
}

var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	hostRE = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$`)
)

// DockerPrefix starts a registry reference on the command line.
const DockerPrefix = "docker://"

// ParseReference parses "docker://HOST/REPO[:TAG|@DIGEST]" (the docker://
// prefix is optional). The host is required unless the name is a Docker Hub
// short name ("busybox" is docker.io/library/busybox). A reference without
// tag or digest means the tag "latest".
func ParseReference(s string) (Reference, error) {
	in := s
	s = strings.TrimPrefix(s, DockerPrefix)
	bad := func(why string) (Reference, error) {
		return Reference{}, fmt.Errorf("registry reference %q: %s (want docker://HOST/REPO[:TAG|@sha256:DIGEST])", in, why)
	}
	if s == "" {
		return bad("empty")
	}
	var r Reference
	if name, d, ok := strings.Cut(s, "@"); ok {
		dg, err := digest.Parse(d)
		if err != nil {
			return bad("bad digest: " + err.Error())
		}
		if dg.Algorithm() != digest.SHA256 {
			return bad("only sha256 digests are supported")
		}
		r.Digest, s = dg, name
	}
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		r.Tag, s = s[i+1:], s[:i]
		if !tagRE.MatchString(r.Tag) {
			return bad(fmt.Sprintf("bad tag %q", r.Tag))
		}
	}
	host, repo, ok := strings.Cut(s, "/")
	if !ok || !(strings.ContainsAny(host, ".:[") || host == "localhost") {
		host, repo = "docker.io", s
		if !strings.Contains(repo, "/") {
			repo = "library/" + repo
		}
	}
	if !hostRE.MatchString(host) {
		return bad(fmt.Sprintf("bad host %q", host))
	}
	if !repoRE.MatchString(repo) {
		return bad(fmt.Sprintf("bad repository %q (lower-case letters, digits and separators . _ - /)", repo))
	}
	r.Host, r.Repo = host, repo
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	return r, nil
}

// Ref is what goes into /v2/REPO/manifests/<Ref>: the digest if pinned,
// else the tag.
func (r Reference) Ref() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}

// Name is HOST/REPO.
func (r Reference) Name() string { return r.Host + "/" + r.Repo }

// String is the reference in docker:// form.
func (r Reference) String() string {
	s := DockerPrefix + r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// WithDigest is r pinned to d (the tag is dropped).
func (r Reference) WithDigest(d digest.Digest) Reference {
	r.Tag, r.Digest = "", d
	return r
}

// apiHost is the host the API lives on (Docker Hub's differs from its name).
func (r Reference) apiHost() string {
	if r.Host == "docker.io" {
		return "registry-1.docker.io"
	}
	return r.Host
}
