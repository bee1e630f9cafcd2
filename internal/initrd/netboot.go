package initrd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// Kernel command-line options of the network boot.
const (
	// OptManifest names the signed system manifest to boot:
	// docker://HOST[:PORT]/REPO@sha256:... or :TAG, or "dhcp" (the
	// reference comes from DHCP option DHCPOptionManifest).
	OptManifest = "vessel.manifest="
	// OptRegistryCA is a PEM file inside the initrd with the registry's
	// TLS CA (default RegistryCAFile when the initrd has it).
	OptRegistryCA = "vessel.registry-ca="
	// OptPlainHTTP=1 talks plain HTTP to the registry: only when the
	// (signed) command line says so.
	OptPlainHTTP = "vessel.registry-plain-http="
	// OptAttempts bounds the attempts to reach the registry (default 5).
	OptAttempts = "vessel.registry-attempts="
)

// DHCPOptionManifest is the DHCP option (site-specific range 224-254,
// RFC 2132 section 9.15... RFC 3942) that may carry the manifest reference
// as text when the command line says vessel.manifest=dhcp.
const DHCPOptionManifest = 224

// RegistryAuthFile is the credentials file (containers auth.json format)
// the initrd may carry; without it the registry is asked anonymously.
const RegistryAuthFile = "/etc/vessel/registry-auth.json"

// RegistryCAFile is the registry's TLS CA the initrd may carry (vessel
// boot initrd --registry-ca); vessel.registry-ca= names another file.
const RegistryCAFile = "/etc/vessel/registry-ca.pem"

// NetMount is the tmpfs that holds the store on a machine without a data
// partition (mounted at DataMount, so the host finds it where it finds
// the partition).
const NetStoreTmpfs = "vessel-net"

// NetBoot is what the kernel command line says about a network boot.
type NetBoot struct {
	Ref        string // docker://... as given, or "" when FromDHCP
	FromDHCP   bool
	RegistryCA string // path inside the initrd
	PlainHTTP  bool
	Attempts   int
}

// DefaultAttempts is how often the registry is tried before the boot halts.
const DefaultAttempts = 5

// ParseNetBoot reads the network-boot options of a kernel command line;
// nil (and no error) when it names no manifest: the boot is from disk.
func ParseNetBoot(cmdline string) (*NetBoot, error) {
	var nb NetBoot
	set := false
	nb.Attempts = DefaultAttempts
	for _, f := range strings.Fields(cmdline) {
		switch {
		case strings.HasPrefix(f, OptManifest):
			v := strings.TrimPrefix(f, OptManifest)
			set = true
			if v == "dhcp" {
				nb.FromDHCP, nb.Ref = true, ""
				continue
			}
			if _, err := ParseManifestRef(v); err != nil {
				return nil, fmt.Errorf("%s%s: %w", OptManifest, v, err)
			}
			nb.Ref = v
		case strings.HasPrefix(f, OptRegistryCA):
			nb.RegistryCA = strings.TrimPrefix(f, OptRegistryCA)
			if !strings.HasPrefix(nb.RegistryCA, "/") {
				return nil, fmt.Errorf("%s%s: must be an absolute path inside the initrd", OptRegistryCA, nb.RegistryCA)
			}
		case strings.HasPrefix(f, OptPlainHTTP):
			v := strings.TrimPrefix(f, OptPlainHTTP)
			switch v {
			case "1", "yes", "true":
				nb.PlainHTTP = true
			case "0", "no", "false":
				nb.PlainHTTP = false
			default:
				return nil, fmt.Errorf("%s%s: want 1 or 0", OptPlainHTTP, v)
			}
		case strings.HasPrefix(f, OptAttempts):
			v := strings.TrimPrefix(f, OptAttempts)
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return nil, fmt.Errorf("%s%s: want a number of attempts from 1 to 100", OptAttempts, v)
			}
			nb.Attempts = n
		}
	}
	if !set {
		return nil, nil
	}
	return &nb, nil
}

// ParseManifestRef parses a manifest reference from the command line or
// DHCP: it must name a registry host and a repository, with a tag or a
// digest (a bare repository would silently mean "latest").
func ParseManifestRef(s string) (registry.Reference, error) {
	if !strings.HasPrefix(s, registry.DockerPrefix) {
		return registry.Reference{}, fmt.Errorf("manifest reference %q: want docker://HOST/REPO@sha256:... or docker://HOST/REPO:TAG", s)
	}
	r, err := registry.ParseReference(s)
	if err != nil {
		return registry.Reference{}, fmt.Errorf("manifest reference %q: %w", s, err)
	}
	rest := strings.TrimPrefix(s, registry.DockerPrefix)
	if !strings.Contains(rest, "@") && !strings.Contains(rest[strings.LastIndex(rest, "/")+1:], ":") {
		return registry.Reference{}, fmt.Errorf("manifest reference %q: name a tag (:TAG) or a digest (@sha256:...)", s)
	}
	return r, nil
}

// Lease is the network configuration DHCP gave.
type Lease struct {
	Interface string
	Addr      netip.Prefix
	Router    netip.Addr // zero if none
	Server    netip.Addr
	// Manifest is the text of DHCP option DHCPOptionManifest, if sent.
	Manifest string
}

// netSystem is what the network boot needs from the kernel: an
// interface up with an address from DHCP.
type netSystem interface {
	netUp(ctx context.Context, printf func(string, ...any)) (*Lease, error)
}

// netBootWait is how long the network boot looks for a data partition to
// cache the images on before it uses a tmpfs. It looks after DHCP: the
// storage drivers loaded with the modules have had that time to probe
// their disks (virtio_blk reads the partition table as it loads), and a
// diskless machine should not wait long for nothing.
const netBootWait = 500 * time.Millisecond

// netSource makes the installed system for the verified boot from a
// registry: the network up by DHCP, the signed manifest the reference
// names and every image it lists pulled into the store at DataMount (the
// data partition's when there is one: a cache, so only what changed is
// pulled; otherwise a tmpfs), verified before anything is recorded. The
// verified boot then verifies that store exactly as one read from disk.
// It returns what is mounted at DataMount.
func (s *Stage) netSource(nb *NetBoot) (string, error) {
	ns, ok := s.sys.(netSystem)
	if !ok {
		return "", errors.New("network boot: this system has no network")
	}
	ctx := context.Background()
	t0 := time.Now()
	lease, err := ns.netUp(ctx, s.printf)
	if err != nil {
		return "", fmt.Errorf("network boot: %w", err)
	}
	s.printf("network: %s %s router %s (DHCP server %s) in %dms", lease.Interface, lease.Addr, addrOr(lease.Router), lease.Server, time.Since(t0).Milliseconds())
	refText, from := nb.Ref, "the kernel command line"
	if nb.FromDHCP {
		if lease.Manifest == "" {
			return "", fmt.Errorf("network boot: %sdhcp, but the DHCP server sent no option %d with a manifest reference", OptManifest, DHCPOptionManifest)
		}
		refText, from = lease.Manifest, fmt.Sprintf("DHCP option %d", DHCPOptionManifest)
	}
	ref, err := ParseManifestRef(refText)
	if err != nil {
		return "", fmt.Errorf("network boot: from %s: %w", from, err)
	}
	s.printf("manifest reference %s (from %s)", ref, from)

	// The store: the data partition's when there is one, else a tmpfs.
	dev, found, err := s.waitData(netBootWait)
	if err != nil {
		return "", fmt.Errorf("network boot: %w", err)
	}
	if found {
		if err := s.sys.mount(Mount{Source: dev, Target: DataMount, FSType: "ext4", Flags: msNoSuid | msNoDev | msNoExec}); err != nil {
			return "", fmt.Errorf("network boot: mount data partition %s: %w", dev, err)
		}
		s.printf("image cache: data partition %s (%s)", dev, DataPartition)
	} else {
		dev = NetStoreTmpfs
		if err := s.sys.mount(Mount{Source: NetStoreTmpfs, Target: DataMount, FSType: "tmpfs", Flags: msNoSuid | msNoDev | msNoExec, Data: "mode=0755"}); err != nil {
			return "", fmt.Errorf("network boot: mount tmpfs for the images: %w", err)
		}
		s.printf("image store: tmpfs (no %s partition)", DataPartition)
	}
	st, err := store.Open(s.path(DataMount))
	if err != nil {
		return "", fmt.Errorf("network boot: %w", err)
	}
	cas, err := trust.LoadCerts(s.path(CAFile))
	if err != nil {
		return "", fmt.Errorf("network boot: the initrd's CA certificate: %w", err)
	}
	pid, err := os.ReadFile(s.path(ProductIDFile))
	if err != nil {
		return "", fmt.Errorf("network boot: read product ID: %w", err)
	}
	var stats PullStats
	opts := registry.Options{PlainHTTP: nb.PlainHTTP, AuthFile: s.path(RegistryAuthFile),
		Retries: 2, Backoff: 500 * time.Millisecond, RetryDeadline: 15 * time.Second, ReadTimeout: 30 * time.Second,
		Progress: func(e registry.Event) { stats.add(e, s.printf) }}
	if nb.RegistryCA != "" {
		opts.CAFile = s.path(nb.RegistryCA)
	} else if _, err := os.Stat(s.path(RegistryCAFile)); err == nil {
		opts.CAFile = s.path(RegistryCAFile)
	}
	c, err := registry.New(opts)
	if err != nil {
		return "", fmt.Errorf("network boot: registry client: %w", err)
	}
	iopts := registry.InstallOptions{Trust: trust.Options{CAs: cas, ProductID: strings.TrimSpace(string(pid))}, SkipBlocks: true}
	t1 := time.Now()
	var cur *registry.Current
	err = Retry(nb.Attempts, time.Second, s.printf, fmt.Sprintf("registry %s", ref.Host), func() error {
		var err error
		cur, err = c.Install(ctx, st, ref, iopts)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("network boot: %w", err)
	}
	if ref.Digest == "" {
		s.printf("tag %s resolved to %s", ref, cur.Source)
	}
	s.printf("pulled %d bytes in %d blobs (%d blobs already here, %d bytes) for manifest %s version %d in %dms",
		stats.Bytes, stats.Blobs, stats.Cached, stats.CachedBytes, cur.Digest, cur.Version, time.Since(t1).Milliseconds())
	// As from disk: the verified boot reads the store read-only.
	if err := s.dataWritable(false); err != nil {
		return "", fmt.Errorf("network boot: remount %s read-only: %w", DataMount, err)
	}
	return dev, nil
}

func addrOr(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

// waitData waits (bounded) for the data partition; found is false if none
// appeared.
func (s *Stage) waitData(wait time.Duration) (string, bool, error) {
	start := time.Now()
	for {
		dev, ok, err := FindPartition(s.Root, DataPartition)
		if err != nil || ok {
			return dev, ok, err
		}
		if time.Since(start) > wait {
			return "", false, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PullStats counts what a network boot transferred.
type PullStats struct {
	Blobs, Cached      int
	Bytes, CachedBytes int64
}

func (p *PullStats) add(e registry.Event, printf func(string, ...any)) {
	switch e.Kind {
	case registry.EventBlobDone:
		p.Blobs++
		p.Bytes += e.Size - e.Offset
	case registry.EventExists:
		p.Cached++
		p.CachedBytes += e.Size
	case registry.EventRetry:
		if e.Digest != "" {
			printf("retrying blob %s: %s", e.Digest, e.Error)
		} else {
			printf("retrying %s (attempt %d of %d in %s): %s", e.Request, e.Attempt, e.Of, e.Wait, e.Error)
		}
	}
}

// Retry runs f at most attempts times while it fails with a transient
// (network) error, printing each failure and the wait before the next
// attempt (doubling from wait, at most 30 s). Any other error (a refused
// signature, a blob that does not match its digest, a missing manifest)
// returns at once: retrying cannot fix it.
func Retry(attempts int, wait time.Duration, printf func(string, ...any), what string, f func() error) error {
	var err error
	for i := 1; i <= attempts; i++ {
		if err = f(); err == nil {
			return nil
		}
		if !Transient(err) {
			return err
		}
		if i == attempts {
			break
		}
		printf("%s: attempt %d of %d failed: %v; next attempt in %s", what, i, attempts, err, wait)
		time.Sleep(wait)
		wait = min(wait*2, 30*time.Second)
	}
	return fmt.Errorf("%s unreachable: %d attempts failed, giving up: %w", what, attempts, err)
}

// Transient reports whether err is a network failure another attempt may
// get past: a refused, reset or closed connection, a timeout, a truncated
// response, a registry 5xx answer.
func Transient(err error) bool {
	if errors.Is(err, registry.ErrCorrupt) || errors.Is(err, registry.ErrNoValidSignature) {
		return false
	}
	var re *registry.Error
	if errors.As(err, &re) {
		return re.Status >= 500
	}
	var ce *tls.CertificateVerificationError
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	if errors.As(err, &ce) || errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ie) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// LeaseFromACK reads the configuration of a DHCP acknowledgement: the
// address and prefix, the first router, the server, and the manifest
// reference option.
func LeaseFromACK(iface string, ack *dhcpv4.DHCPv4) (*Lease, error) {
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return nil, fmt.Errorf("DHCP answer from %s gives no address", ack.ServerIPAddr)
	}
	bits := 24
	if m := ack.SubnetMask(); m != nil {
		ones, size := m.Size()
		if size != 32 {
			return nil, fmt.Errorf("DHCP answer: subnet mask %s is not a prefix", net.IP(m))
		}
		bits = ones
	}
	l := &Lease{Interface: iface, Addr: netip.PrefixFrom(ip, bits)}
	if rs := ack.Router(); len(rs) > 0 {
		l.Router, _ = netip.AddrFromSlice(rs[0].To4())
	}
	if sid := ack.ServerIdentifier(); sid != nil {
		l.Server, _ = netip.AddrFromSlice(sid.To4())
	}
	if v := ack.Options.Get(dhcpv4.GenericOptionCode(DHCPOptionManifest)); len(v) > 0 {
		l.Manifest = strings.TrimRight(string(v), "\x00")
	}
	return l, nil
}

// manifestSource puts the installed system to verify at DataMount: pulled
// from a registry when the command line names a manifest
// (vessel.manifest=), else the data partition, read-only. It returns what
// is mounted there.
func (s *Stage) manifestSource() (string, error) {
	cmd, err := os.ReadFile(s.path(CmdlineFile))
	if err != nil {
		return "", fmt.Errorf("read kernel command line: %w", err)
	}
	nb, err := ParseNetBoot(string(cmd))
	if err != nil {
		return "", fmt.Errorf("network boot: %w", err)
	}
	if nb == nil {
		return s.diskSource()
	}
	return s.netSource(nb)
}
