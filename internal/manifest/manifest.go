// Package manifest defines the system manifest: the product, a version and
// every image a machine runs (the host rootfs and each service), pinned by
// digest. It parses system.yaml (what a person writes), builds a manifest
// from it by resolving image tags in the store, and parses manifests
// strictly.
//
// A Manifest from this package is unverified data. To sign one or to get a
// manifest later stages may act on, use package trust (trust.Sign,
// trust.Verify, trust.VerifiedManifest).
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/manifest/strictjson"
)

// MediaType identifies a vessel system manifest.
const MediaType = "application/vnd.vessel.system-manifest.v1+json"

// Limits on untrusted input.
const (
	MaxSize     = 2 << 20 // bytes of manifest JSON
	MaxServices = 1000
)

// ErrInvalid is wrapped by every parse and validation error.
var ErrInvalid = errors.New("invalid manifest")

// Manifest is a system manifest.
type Manifest struct {
	MediaType   string    `json:"mediaType"`
	Product     string    `json:"product"`               // product UUID (lower case)
	ProductName string    `json:"productName,omitempty"` // informational
	Version     int64     `json:"version"`               // >= 1, must grow
	Hostfs      *Image    `json:"hostfs,omitempty"`
	Services    []Service `json:"services"`
	// HealthSeconds is how long every service must stay up and healthy
	// before a trial boot of this manifest is confirmed (docs/update.md);
	// 0: the default (30 s).
	HealthSeconds int64 `json:"healthSeconds,omitempty"`
}

// Image pins an OCI image manifest by digest.
type Image struct {
	Ref       string        `json:"ref,omitempty"` // the reference it was built from (informational)
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

// Service is one service the machine runs.
type Service struct {
	Name    string   `json:"name"`
	Image   Image    `json:"image"`
	Command []string `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
	Env     []string `json:"env,omitempty"` // KEY=VALUE, sorted by key
	User    string   `json:"user,omitempty"`
	Restart string   `json:"restart"` // always | on-failure | never
	// Capabilities are exactly the capabilities the service gets. Empty
	// means the runtime's default set (Docker's), unless NoCapabilities
	// says none: manifests from before issue 19 have no NoCapabilities
	// and keep their meaning; a vessel from before it refuses a manifest
	// with NoCapabilities (an unknown key) instead of granting the default
	// set. See docs/manifest.md.
	Capabilities   []string `json:"capabilities,omitempty"`
	NoCapabilities bool     `json:"noCapabilities,omitempty"`
	Network        string   `json:"network"` // host | none | private
	Ports          []Port   `json:"ports,omitempty"`
	Volumes        []Volume `json:"volumes,omitempty"`
	ReadOnly       bool     `json:"readonly,omitempty"`
	// Init runs a tiny static init as the container's PID 1, which passes
	// signals on and reaps zombies (podman run --init).
	Init bool `json:"init,omitempty"`
	// UserNS puts the service in a user namespace of its own: "auto" (a
	// range of subordinate ids no other service has) or "group:NAME" (one
	// range shared by every service of the group). Empty: the host's ids.
	UserNS string `json:"userns,omitempty"`
	// Health is a command the host runs (in the host root, as root) to
	// check the service during a trial boot: exit status 0 is healthy
	// (docs/update.md). Empty: running is healthy.
	Health []string `json:"health,omitempty"`
}

// Port publishes a container port on the host (network "private" only).
type Port struct {
	Host      uint16 `json:"host"`
	Container uint16 `json:"container"`
	Protocol  string `json:"protocol"` // tcp | udp
}

// Volume is persistent storage that survives restarts and updates.
type Volume struct {
	Name string `json:"name"`
	Path string `json:"path"` // absolute path inside the container
}

// Restart policies and network modes.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
	NetworkHost      = "host"
	NetworkNone      = "none"
	NetworkPrivate   = "private"
)

// Images returns every image the manifest references: the hostfs first (if
// any), then the services in order.
func (m *Manifest) Images() []Image {
	var out []Image
	if m.Hostfs != nil {
		out = append(out, *m.Hostfs)
	}
	for _, s := range m.Services {
		out = append(out, s.Image)
	}
	return out
}

// Service returns the service with the given name.
func (m *Manifest) Service(name string) (Service, bool) {
	for _, s := range m.Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

// Parse parses and validates manifest JSON strictly: at most MaxSize bytes,
// valid UTF-8, no duplicate or unknown keys, nothing after the value.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes is more than the %d allowed", ErrInvalid, len(b), MaxSize)
	}
	var m Manifest
	if err := strictjson.Unmarshal(b, &m); err != nil {
		if werr := WrongFile(b, KindManifest); werr != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, werr)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Marshal validates m and encodes it in the canonical form vessel writes
// (indented, fields in declaration order, trailing newline).
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

var (
	uuidRE    = lazyRegexp(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	svcNameRE = lazyRegexp(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	envKeyRE  = lazyRegexp(`^[A-Za-z_][A-Za-z0-9_]*$`)
	volNameRE = lazyRegexp(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	userRE    = lazyRegexp(`^([0-9]{1,10}(:[0-9]{1,10})?|[a-z_][a-z0-9_-]{0,31}(:[a-z_][a-z0-9_-]{0,31})?)$`)
	capRE     = lazyRegexp(`^CAP_[A-Z_]{2,32}$`)
)

// lazyRegexp is a regular expression compiled on first use: every vessel
// command links this package, and compiling these at start-up cost about
// 2 ms of each `vessel run` (GODEBUG=inittrace=1).
type lazyRegexpT struct {
	src  string
	once sync.Once
	re   *regexp.Regexp
}

func lazyRegexp(src string) *lazyRegexpT { return &lazyRegexpT{src: src} }

func (l *lazyRegexpT) MatchString(s string) bool {
	l.once.Do(func() { l.re = regexp.MustCompile(l.src) })
	return l.re.MatchString(s)
}

// knownCaps are the Linux capabilities (capability.h, Linux 6.x).
var knownCaps = map[string]bool{}

func init() {
	for _, c := range strings.Fields(`CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID
		SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
		SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE
		SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN
		SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE`) {
		knownCaps["CAP_"+c] = true
	}
}

// NormalizeCapability returns the CAP_-prefixed upper-case name of a
// capability, or an error if Linux has no such capability.
func NormalizeCapability(c string) (string, error) {
	u := strings.ToUpper(strings.TrimSpace(c))
	if !strings.HasPrefix(u, "CAP_") {
		u = "CAP_" + u
	}
	if !knownCaps[u] {
		return "", fmt.Errorf("unknown capability %q", c)
	}
	return u, nil
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Validate checks every field of m; errors wrap ErrInvalid and name the
// offending field.
func (m *Manifest) Validate() error {
	if m.MediaType != MediaType {
		return invalid("mediaType is %q, want %q", m.MediaType, MediaType)
	}
	if !uuidRE.MatchString(m.Product) {
		return invalid("product %q is not a lower-case UUID", m.Product)
	}
	if len(m.ProductName) > 64 || strings.ContainsFunc(m.ProductName, isControl) {
		return invalid("productName %q is not a valid name", m.ProductName)
	}
	if m.Version < 1 {
		return invalid("version %d: must be a positive integer", m.Version)
	}
	if m.HealthSeconds < 0 || m.HealthSeconds > 3600 {
		return invalid("healthSeconds %d: want 0 (the default) to 3600", m.HealthSeconds)
	}
	if m.Hostfs == nil && len(m.Services) == 0 {
		return invalid("no hostfs and no services: nothing to run")
	}
	if m.Hostfs != nil {
		if err := m.Hostfs.validate(); err != nil {
			return invalid("hostfs: %v", err)
		}
	}
	if len(m.Services) > MaxServices {
		return invalid("%d services is more than the %d allowed", len(m.Services), MaxServices)
	}
	names := map[string]bool{}
	hostPorts := map[string]string{}
	for i := range m.Services {
		s := &m.Services[i]
		if !svcNameRE.MatchString(s.Name) {
			return invalid("services[%d]: name %q must be lower-case letters, digits and '-' (at most 63)", i, s.Name)
		}
		if names[s.Name] {
			return invalid("services[%d]: duplicate service name %q", i, s.Name)
		}
		names[s.Name] = true
		if err := s.validate(hostPorts); err != nil {
			return invalid("service %q: %v", s.Name, err)
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func (im *Image) validate() error {
	if im.MediaType != ocispec.MediaTypeImageManifest {
		return fmt.Errorf("image mediaType %q: want %q", im.MediaType, ocispec.MediaTypeImageManifest)
	}
	if err := im.Digest.Validate(); err != nil {
		return fmt.Errorf("image digest %q: %v", im.Digest, err)
	}
	if a := im.Digest.Algorithm(); a != digest.SHA256 && a != digest.SHA512 {
		return fmt.Errorf("image digest %q: algorithm %s not allowed (sha256, sha512)", im.Digest, a)
	}
	if im.Size <= 0 || im.Size > 64<<20 {
		return fmt.Errorf("image size %d out of range", im.Size)
	}
	if len(im.Ref) > 512 || strings.ContainsFunc(im.Ref, isControl) {
		return fmt.Errorf("image ref %q is not valid", im.Ref)
	}
	return nil
}

func (s *Service) validate(hostPorts map[string]string) error {
	if err := s.Image.validate(); err != nil {
		return err
	}
	for _, l := range [][]string{s.Command, s.Args, s.Health} {
		for _, a := range l {
			if strings.IndexByte(a, 0) >= 0 {
				return errors.New("command or args contain a NUL byte")
			}
		}
	}
	if len(s.Command) > 0 && s.Command[0] == "" {
		return errors.New("command[0] is empty")
	}
	if len(s.Health) > 0 && !strings.HasPrefix(s.Health[0], "/") {
		return fmt.Errorf("health %q: the command must be an absolute path in the host root", s.Health[0])
	}
	keys := map[string]bool{}
	for _, e := range s.Env {
		k, v, ok := strings.Cut(e, "=")
		if !ok || !envKeyRE.MatchString(k) || strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("env %q: want KEY=VALUE with KEY of letters, digits and '_'", e)
		}
		if keys[k] {
			return fmt.Errorf("env: duplicate key %q", k)
		}
		keys[k] = true
	}
	if s.User != "" && !userRE.MatchString(s.User) {
		return fmt.Errorf("user %q: want NAME[:GROUP] or UID[:GID]", s.User)
	}
	switch s.Restart {
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		return fmt.Errorf("restart %q: want always, on-failure or never", s.Restart)
	}
	if s.NoCapabilities && len(s.Capabilities) > 0 {
		return fmt.Errorf("noCapabilities is set but capabilities lists %v", s.Capabilities)
	}
	caps := map[string]bool{}
	for _, c := range s.Capabilities {
		if !capRE.MatchString(c) || !knownCaps[c] {
			return fmt.Errorf("capability %q: unknown (want e.g. CAP_NET_BIND_SERVICE)", c)
		}
		if caps[c] {
			return fmt.Errorf("capability %q listed twice", c)
		}
		caps[c] = true
	}
	if err := ValidUserNS(s.UserNS); err != nil {
		return err
	}
	switch s.Network {
	case NetworkHost, NetworkNone, NetworkPrivate:
	default:
		return fmt.Errorf("network %q: want host, none or private", s.Network)
	}
	if len(s.Ports) > 0 && s.Network != NetworkPrivate {
		return fmt.Errorf("ports need network: private (network is %s)", s.Network)
	}
	for _, p := range s.Ports {
		if p.Host == 0 || p.Container == 0 {
			return fmt.Errorf("port %d:%d: ports are 1-65535", p.Host, p.Container)
		}
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return fmt.Errorf("port %d: protocol %q: want tcp or udp", p.Host, p.Protocol)
		}
		k := strconv.Itoa(int(p.Host)) + "/" + p.Protocol
		if other, ok := hostPorts[k]; ok {
			return fmt.Errorf("host port %s is already published by service %q", k, other)
		}
		hostPorts[k] = s.Name
	}
	vnames, vpaths := map[string]bool{}, map[string]bool{}
	for _, v := range s.Volumes {
		if !volNameRE.MatchString(v.Name) {
			return fmt.Errorf("volume name %q: lower-case letters, digits, '.', '_', '-'", v.Name)
		}
		if !path.IsAbs(v.Path) || path.Clean(v.Path) != v.Path || v.Path == "/" || strings.ContainsFunc(v.Path, isControl) {
			return fmt.Errorf("volume %q: path %q must be a clean absolute path other than /", v.Name, v.Path)
		}
		if vnames[v.Name] || vpaths[v.Path] {
			return fmt.Errorf("volume %q (%s) listed twice", v.Name, v.Path)
		}
		vnames[v.Name], vpaths[v.Path] = true, true
	}
	return nil
}

// UserNSAuto is the userns value for a range of the service's own;
// UserNSGroupPrefix starts a shared one ("group:NAME").
const (
	UserNSAuto        = "auto"
	UserNSGroupPrefix = "group:"
)

var usernsGroupRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// ValidUserNS checks a service's userns value: empty, "auto" or
// "group:NAME" with NAME of a-z, 0-9, '_', '.' and '-'.
func ValidUserNS(v string) error {
	if v == "" || v == UserNSAuto {
		return nil
	}
	if g, ok := strings.CutPrefix(v, UserNSGroupPrefix); ok && usernsGroupRE.MatchString(g) {
		return nil
	}
	return fmt.Errorf("userns %q: want auto or group:NAME (NAME of a-z, 0-9, '_', '.', '-')", v)
}
