package registry

import (
	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/reference"
)

// Reference names an image in a registry: HOST/REPO[:TAG|@DIGEST].
type Reference struct {
	Host   string        // registry host[:port], e.g. 127.0.0.1:5000
	Repo   string        // repository path, e.g. acme/web
	Tag    string        // empty when Digest is set or no tag was given
	Digest digest.Digest // empty unless pinned
}

// DockerPrefix starts a registry reference on the command line.
const DockerPrefix = reference.DockerPrefix

// ParseReference parses "docker://HOST/REPO[:TAG|@DIGEST]" with package
// reference's rules (the docker:// prefix may be left out). The host is
// required unless the name is a Docker Hub short name ("busybox" is
// docker.io/library/busybox). A reference without tag or digest means the
// tag "latest".
func ParseReference(s string) (Reference, error) {
	r, err := reference.ParseDocker(s)
	if err != nil {
		return Reference{}, err
	}
	return FromRef(r), nil
}

// FromRef is the registry reference of a parsed docker:// reference.
func FromRef(r reference.Ref) Reference {
	return Reference{Host: r.Host, Repo: r.Name, Tag: r.Tag, Digest: r.Digest}
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
