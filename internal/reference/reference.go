// Package reference is the one parser of image references: every command
// and the recipe parser turn the strings users type into a Ref here, so an
// image is named the same way everywhere.
//
// The forms, with the transport names skopeo and containers/image use:
//
//	NAME[:TAG]                         an image in the local store (tag latest if none)
//	NAME@sha256:HEX                    a manifest in the local store, by digest
//	sha256:HEX                         the same, without a name
//	oci:DIR[:TAG]                      an image in an OCI layout directory
//	docker://HOST/REPO[:TAG|@DIGEST]   an image in a registry
//	oci-archive:PATH[:TAG]             a tar of an OCI layout (read only)
//	docker-archive:PATH[:NAME[:TAG]]   a `docker save` tar (read only)
//
// Rules, with the reasons:
//
//   - oci: the directory ends at the FIRST colon and everything after it is
//     the tag (the org.opencontainers.image.ref.name of the index entry), so
//     "oci:/srv/a:b/lay:v1" is the directory /srv/a and the tag "b/lay:v1".
//     skopeo (containers/image's oci transport) and stacker split it that
//     way, so a tag may contain colons and a directory may not. The tag
//     follows the image-spec grammar of ref.name that containers/image
//     checks (letters and digits joined by one of - . _ : @ + or "--",
//     components separated by "/"); an empty tag means "the layout's only
//     image" as a source.
//   - oci-archive: and docker-archive: split PATH from what follows at the
//     first colon too, as containers/image does. The oci-archive tag is
//     read as an oci: tag; the docker-archive NAME[:TAG] is read as a
//     docker:// reference without the prefix (busybox is
//     docker.io/library/busybox:latest) and picks one of the RepoTags.
//     Package archive unpacks them; they are sources only.
//   - docker: as in containers/image, a first component that contains a
//     "." or ":" or is "localhost" is the registry host; otherwise the host
//     is docker.io and a one-component repository gets "library/"
//     ("docker://busybox" is docker://docker.io/library/busybox:latest).
//     No tag and no digest means the tag latest; a tag and a digest together
//     are refused, as skopeo refuses them.
//   - NAME follows the distribution spec's repository grammar: lower-case
//     components of letters and digits separated by ".", "_", "__" or "-"s,
//     joined by "/", at most 255 characters. No upper case, no "..", no
//     empty component, no leading or trailing "/". The first component may
//     carry a port (localhost:5000/app), as a registry host would.
//   - TAG follows the distribution spec: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
//   - DIGEST is sha256:<64 lower-case hex digits>; no other algorithm is
//     stored or fetched.
//   - Any other transport is refused with `unsupported transport "X"`:
//     "X://..." for any X but docker; "X:..." when X is docker,
//     docker-daemon or containers-storage; and
//     "X:..." when what follows the colon has a "/" ("foo:/tmp/x",
//     "dir:./out"). "app:1" stays the store image app, tag 1, and so does
//     "dir:x" (dir is a plausible image name). A one-component store name
//     cannot be oci, sha256, oci-archive, docker-archive or one of the
//     transports above.
package reference

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/vesselos/vessel/internal/lazyre"
)

// Transport says where the image named by a Ref lives.
type Transport string

const (
	// Store is the local image store: NAME[:TAG], NAME@DIGEST or DIGEST.
	Store Transport = "store"
	// OCI is an OCI image layout directory: oci:DIR[:TAG].
	OCI Transport = "oci"
	// Docker is a registry speaking the distribution API:
	// docker://HOST/REPO[:TAG|@DIGEST].
	Docker Transport = "docker"
	// OCIArchive is a tar of an OCI layout: oci-archive:PATH[:TAG]. Read only.
	OCIArchive Transport = "oci-archive"
	// DockerArchive is a `docker save` tar:
	// docker-archive:PATH[:NAME[:TAG]]. Read only.
	DockerArchive Transport = "docker-archive"
)

// DockerPrefix starts a registry reference.
const DockerPrefix = "docker://"

// OCIPrefix starts an OCI layout reference.
const OCIPrefix = "oci:"

// DefaultTag is the tag of a store or registry reference that names none.
const DefaultTag = "latest"

// DockerHub is the registry host of references that name none.
const DockerHub = "docker.io"

// MaxNameLength bounds NAME and HOST/REPO, as the distribution reference
// grammar does.
const MaxNameLength = 255

var (
	// ErrInvalid is wrapped by every error about a malformed reference.
	ErrInvalid = errors.New("invalid image reference")
	// ErrUnsupportedTransport is wrapped when a reference names a transport
	// vessel does not read or write.
	ErrUnsupportedTransport = errors.New("unsupported transport")
)

// Ref is a parsed image reference. The zero Ref is not valid; make one with
// Parse (or ParseStore, ParseDocker, ParseLayout).
type Ref struct {
	Transport Transport
	// Host is the registry host[:port] (Docker only).
	Host string
	// Name is the store NAME or the registry REPO (empty for OCI, and for a
	// store reference that is a bare digest).
	Name string
	// Dir is the OCI layout directory (OCI only).
	Dir string
	// Tag is the tag: "latest" for a store or registry reference that
	// names neither tag nor digest; for OCI the ref.name, possibly empty.
	Tag string
	// Digest pins a manifest (Store and Docker only); Tag is then empty.
	Digest digest.Digest
}

// Error is a reference that failed to parse: Input is what was given,
// Problem says which rule it broke. It wraps ErrInvalid or
// ErrUnsupportedTransport.
type Error struct {
	Input   string
	Problem string
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("image reference %q: %s", e.Input, e.Problem)
}

func (e *Error) Unwrap() error { return e.Err }

func invalid(in, format string, args ...any) error {
	return &Error{Input: in, Problem: fmt.Sprintf(format, args...), Err: ErrInvalid}
}

const (
	pathComponent = `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
	hostComponent = `(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])`
	hostName      = hostComponent + `(?:\.` + hostComponent + `)*`
	ipv6          = `\[[0-9A-Fa-f:]+\]`
	ociComponent  = `[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*`
)

var (
	pathComponentRE = lazyre.New(`^` + pathComponent + `$`)
	tagRE           = lazyre.New(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	hostRE          = lazyre.New(`^(?:` + hostName + `|` + ipv6 + `)(?::[0-9]+)?$`)
	// storeHostRE is a first store-name component with a port.
	storeHostRE = lazyre.New(`^` + strings.ToLower(hostName) + `:[0-9]+$`)
	// ociRefRE is the image-spec grammar of org.opencontainers.image.ref.name,
	// which containers/image checks oci: tags against (ValidateImageName in
	// its oci/internal package): components of letters and digits joined by
	// one of - . _ : @ + or "--", separated by "/".
	ociRefRE = lazyre.New(`^` + ociComponent + `(?:/` + ociComponent + `)*$`)
	// transportRE is what a transport name looks like.
	transportRE = lazyre.New(`^[A-Za-z][A-Za-z0-9+.-]*$`)
)

// otherTransports are containers/image transport names that vessel does not
// support and that no one names an image: "NAME:..." with one of them is
// refused rather than read as a store tag. (oci-archive and docker-archive
// are supported, and reserved as store names too.) The other containers/image
// transports (dir, tarball, sif, ostree) are plausible image names; they
// are refused as transports only when a path follows ("dir:/tmp/x",
// "dir:./x"), by the rule for any "X:" followed by a "/".
var otherTransports = map[string]bool{
	"docker":             true, // "docker:x" without "//": skopeo refuses it too
	"docker-daemon":      true,
	"containers-storage": true,
}

// Forms is the one-line list of accepted reference forms, for messages.
const Forms = "NAME[:TAG], NAME@sha256:HEX, oci:DIR[:TAG], docker://HOST/REPO[:TAG|@sha256:HEX], oci-archive:PATH[:TAG] or docker-archive:PATH[:NAME[:TAG]]"

func unsupported(in, transport string) error {
	hint := ""
	switch transport {
	case "docker-daemon", "containers-storage", "dir":
		hint = fmt.Sprintf("; copy it to a layout first: skopeo copy %s:... oci:DIR:TAG", transport)
	case "docker":
		hint = "; a registry reference is docker://HOST/REPO[:TAG]"
	}
	return &Error{Input: in, Problem: fmt.Sprintf("unsupported transport %q (vessel reads %s%s)", transport, Forms, hint), Err: ErrUnsupportedTransport}
}

// Parse parses any reference form (see the package comment).
func Parse(s string) (Ref, error) {
	if s == "" {
		return Ref{}, invalid(s, "empty (want %s)", Forms)
	}
	if rest, ok := strings.CutPrefix(s, OCIPrefix); ok {
		return parseLayout(s, rest, OCI)
	}
	if rest, ok := strings.CutPrefix(s, string(OCIArchive)+":"); ok {
		return parseLayout(s, rest, OCIArchive)
	}
	if rest, ok := strings.CutPrefix(s, string(DockerArchive)+":"); ok {
		return parseDockerArchive(s, rest)
	}
	if scheme, _, ok := strings.Cut(s, "://"); ok && transportRE.MatchString(scheme) {
		if scheme != "docker" {
			return Ref{}, unsupported(s, scheme)
		}
		return ParseDocker(s)
	}
	if t, rest, ok := strings.Cut(s, ":"); ok && transportRE.MatchString(t) {
		if otherTransports[t] {
			return Ref{}, unsupported(s, t)
		}
		// "foo:/tmp/x" or "foo:./x": no tag has a '/', and unless foo:PORT is
		// the host of a store name (localhost:5000/app), foo was meant as
		// a transport.
		port, _, _ := strings.Cut(rest, "/")
		if strings.Contains(rest, "/") && !storeHostRE.MatchString(t+":"+port) {
			return Ref{}, unsupported(s, t)
		}
	}
	return ParseStore(s)
}

// ParseStore parses a store reference: NAME[:TAG], NAME@sha256:HEX or
// sha256:HEX.
func ParseStore(s string) (Ref, error) {
	r := Ref{Transport: Store}
	if strings.HasPrefix(s, string(digest.SHA256)+":") {
		d, err := parseDigest(s, s)
		if err != nil {
			return Ref{}, err
		}
		r.Digest = d
		return r, nil
	}
	name := s
	if n, d, ok := strings.Cut(s, "@"); ok {
		dg, err := parseDigest(s, d)
		if err != nil {
			return Ref{}, err
		}
		r.Digest, name = dg, n
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		r.Tag, name = name[i+1:], name[:i]
		if err := checkTag(s, r.Tag); err != nil {
			return Ref{}, err
		}
		if r.Digest != "" {
			return Ref{}, invalid(s, "a tag and a digest together are not supported: give one")
		}
	}
	if err := checkStoreName(s, name); err != nil {
		return Ref{}, err
	}
	r.Name = name
	if r.Tag == "" && r.Digest == "" {
		r.Tag = DefaultTag
	}
	return r, nil
}

// ParseDocker parses a registry reference, docker://HOST/REPO[:TAG|@DIGEST].
// The "docker://" prefix may be left out.
func ParseDocker(s string) (Ref, error) {
	in := s
	s = strings.TrimPrefix(s, DockerPrefix)
	if s == "" {
		return Ref{}, invalid(in, "no repository (want docker://HOST/REPO[:TAG|@sha256:HEX])")
	}
	r := Ref{Transport: Docker}
	if name, d, ok := strings.Cut(s, "@"); ok {
		dg, err := parseDigest(in, d)
		if err != nil {
			return Ref{}, err
		}
		r.Digest, s = dg, name
	}
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		r.Tag, s = s[i+1:], s[:i]
		if err := checkTag(in, r.Tag); err != nil {
			return Ref{}, err
		}
		if r.Digest != "" {
			return Ref{}, invalid(in, "a tag and a digest together are not supported: give one (skopeo refuses them too)")
		}
	}
	host, repo, ok := strings.Cut(s, "/")
	if !ok || !(strings.ContainsAny(host, ".:[") || host == "localhost") {
		host, repo = DockerHub, s
	}
	if host == "index.docker.io" {
		host = DockerHub // containers/image's normalization
	}
	if host == DockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo // docker.io/busybox is docker.io/library/busybox
	}
	if !hostRE.MatchString(host) {
		return Ref{}, invalid(in, "registry host %q is not a host name or address with an optional :PORT", host)
	}
	if err := checkPath(in, "repository", repo); err != nil {
		return Ref{}, err
	}
	if len(host)+1+len(repo) > MaxNameLength {
		return Ref{}, invalid(in, "HOST/REPO is %d characters, more than %d", len(host)+1+len(repo), MaxNameLength)
	}
	r.Host, r.Name = host, repo
	if r.Tag == "" && r.Digest == "" {
		r.Tag = DefaultTag
	}
	return r, nil
}

// ParseLayout parses the part of an OCI layout reference after "oci:",
// DIR[:TAG] (the form a recipe's `from: {type: oci, url: DIR:TAG}` takes).
func ParseLayout(s string) (Ref, error) { return parseLayout(s, s, OCI) }

func parseLayout(in, rest string, t Transport) (Ref, error) {
	dir, tag, _ := strings.Cut(rest, ":")
	if dir == "" && t == OCIArchive {
		return Ref{}, invalid(in, "no archive path (want oci-archive:PATH[:TAG])")
	}
	if dir == "" {
		return Ref{}, invalid(in, "no layout directory (want oci:DIR[:TAG])")
	}
	if tag != "" && !ociRefRE.MatchString(tag) {
		return Ref{}, invalid(in, "layout tag %q: a tag (org.opencontainers.image.ref.name) is letters and digits joined by one of - . _ : @ + or --, and /; note that the directory ends at the first colon", tag)
	}
	return Ref{Transport: t, Dir: dir, Tag: tag}, nil
}

// parseDockerArchive parses PATH[:NAME[:TAG]] after "docker-archive:". As
// in containers/image, PATH ends at the first colon and NAME[:TAG] names one
// of the archive's RepoTags (tag latest if none; digests are refused).
func parseDockerArchive(in, rest string) (Ref, error) {
	path, name, _ := strings.Cut(rest, ":")
	if path == "" {
		return Ref{}, invalid(in, "no archive path (want docker-archive:PATH[:NAME[:TAG]])")
	}
	r := Ref{Transport: DockerArchive, Dir: path}
	if name == "" {
		return r, nil
	}
	if strings.Contains(name, "://") || strings.Contains(name, "@") {
		return Ref{}, invalid(in, "docker-archive names an image by NAME[:TAG] from its RepoTags, not %q", name)
	}
	d, err := ParseDocker(name)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return Ref{}, invalid(in, "%s", e.Problem)
		}
		return Ref{}, err
	}
	r.Host, r.Name, r.Tag = d.Host, d.Name, d.Tag
	return r, nil
}

func parseDigest(in, s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", invalid(in, "digest %q: %v (want sha256:<64 lower-case hex digits>)", s, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", invalid(in, "digest %q: only sha256 digests are supported", s)
	}
	return d, nil
}

func checkTag(in, tag string) error {
	switch {
	case tag == "":
		return invalid(in, "empty tag after ':'")
	case len(tag) > 128:
		return invalid(in, "tag is %d characters, more than 128", len(tag))
	case !tagRE.MatchString(tag):
		return invalid(in, "tag %q: a tag is letters, digits, '_', '.' and '-', and does not start with '.' or '-'", tag)
	}
	return nil
}

// checkStoreName checks a store NAME: a repository path whose first
// component may carry a port.
func checkStoreName(in, name string) error {
	if name == "" {
		return invalid(in, "no image name (want %s)", Forms)
	}
	if len(name) > MaxNameLength {
		return invalid(in, "name is %d characters, more than %d", len(name), MaxNameLength)
	}
	path := name
	if first, rest, ok := strings.Cut(name, "/"); ok && storeHostRE.MatchString(first) {
		path = rest
	}
	if name == string(digest.SHA256) {
		return invalid(in, "the name %q is reserved for digests (sha256:HEX)", name)
	}
	if otherTransports[name] || name+":" == OCIPrefix || name == string(OCIArchive) || name == string(DockerArchive) {
		return invalid(in, "the name %q is reserved: %s:... names a transport", name, name)
	}
	return checkPath(in, "name", path)
}

// checkPath checks a repository path against the distribution spec and
// says which rule a bad one breaks.
func checkPath(in, what, p string) error {
	const rule = "a path component is lower-case letters and digits, separated by one '.', one or two '_', or '-'s"
	if p == "" {
		return invalid(in, "empty %s", what)
	}
	if strings.HasPrefix(p, "/") {
		return invalid(in, "%s %q starts with '/': it must be a relative path of lower-case components", what, p)
	}
	if strings.ToLower(p) != p {
		return invalid(in, "%s %q has upper case: names must be lower case (distribution spec)", what, p)
	}
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "":
			return invalid(in, "%s %q has an empty path component (a trailing or double '/')", what, p)
		case c == "." || c == "..":
			return invalid(in, "%s %q has the path component %q: %s", what, p, c, rule)
		case !pathComponentRE.MatchString(c):
			return invalid(in, "%s %q: path component %q breaks the distribution spec: %s", what, p, c, rule)
		}
	}
	return nil
}

// String is the reference in the form Parse reads: Parse(r.String()) == r
// for every r that Parse returned.
func (r Ref) String() string {
	switch r.Transport {
	case OCI:
		if r.Tag == "" {
			return OCIPrefix + r.Dir
		}
		return OCIPrefix + r.Dir + ":" + r.Tag
	case Docker:
		return DockerPrefix + r.Host + "/" + r.Name + r.suffix()
	case OCIArchive:
		if r.Tag == "" {
			return string(OCIArchive) + ":" + r.Dir
		}
		return string(OCIArchive) + ":" + r.Dir + ":" + r.Tag
	case DockerArchive:
		if r.Name == "" {
			return string(DockerArchive) + ":" + r.Dir
		}
		return string(DockerArchive) + ":" + r.Dir + ":" + r.Host + "/" + r.Name + ":" + r.Tag
	}
	if r.Name == "" {
		return r.Digest.String()
	}
	return r.Name + r.suffix()
}

func (r Ref) suffix() string {
	if r.Digest != "" {
		return "@" + r.Digest.String()
	}
	return ":" + r.Tag
}

// IsArchive reports whether r names an image in an archive file.
func (r Ref) IsArchive() bool { return r.Transport == OCIArchive || r.Transport == DockerArchive }

// Repository is HOST/REPO for a registry or docker-archive reference and
// NAME otherwise.
func (r Ref) Repository() string {
	if r.Transport == Docker || (r.Transport == DockerArchive && r.Name != "") {
		return r.Host + "/" + r.Name
	}
	return r.Name
}
