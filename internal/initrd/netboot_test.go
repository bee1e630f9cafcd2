package initrd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/vesselos/vessel/internal/registry"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseNetBoot(t *testing.T) {
	nb, err := ParseNetBoot("console=ttyS0 vessel.test=root")
	if err != nil || nb != nil {
		t.Fatalf("no vessel.manifest=: got %+v, %v; want a disk boot (nil)", nb, err)
	}
	nb, err = ParseNetBoot("console=ttyS0 vessel.manifest=docker://10.0.2.100:5000/acme/system@" + testDigest + " vessel.registry-plain-http=1 vessel.registry-attempts=3")
	if err != nil {
		t.Fatal(err)
	}
	if nb.Ref != "docker://10.0.2.100:5000/acme/system@"+testDigest || !nb.PlainHTTP || nb.Attempts != 3 || nb.FromDHCP || nb.RegistryCA != "" {
		t.Fatalf("got %+v", nb)
	}
	nb, err = ParseNetBoot("vessel.manifest=dhcp vessel.registry-ca=/etc/vessel/registry-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	if !nb.FromDHCP || nb.Ref != "" || nb.PlainHTTP || nb.Attempts != DefaultAttempts || nb.RegistryCA != "/etc/vessel/registry-ca.pem" {
		t.Fatalf("got %+v", nb)
	}
	for _, bad := range []struct{ cmdline, want string }{
		{"vessel.manifest=10.0.2.100:5000/acme/system:v1", "want docker://"},
		{"vessel.manifest=docker://10.0.2.100:5000/acme/system", "name a tag"},
		{"vessel.manifest=docker://10.0.2.100:5000/Acme/system:v1", "vessel.manifest=docker://10.0.2.100:5000/Acme"},
		{"vessel.manifest=docker://h:5000/a@sha256:12", "vessel.manifest="},
		{"vessel.manifest=dhcp vessel.registry-plain-http=maybe", "want 1 or 0"},
		{"vessel.manifest=dhcp vessel.registry-attempts=0", "from 1 to 100"},
		{"vessel.manifest=dhcp vessel.registry-ca=ca.pem", "absolute path"},
	} {
		_, err := ParseNetBoot(bad.cmdline)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want one containing %q", bad.cmdline, err, bad.want)
		}
	}
	// A tag is accepted (resolved once at boot), with a registry port.
	r, err := ParseManifestRef("docker://10.0.2.100:5000/acme/system:stable")
	if err != nil || r.Host != "10.0.2.100:5000" || r.Repo != "acme/system" || r.Tag != "stable" || r.Digest != "" {
		t.Fatalf("tag reference: %+v, %v", r, err)
	}
}

// TestLeaseFromACK reads a DHCP acknowledgement as qemu's user network
// sends it, plus the manifest option, from its wire form.
func TestLeaseFromACK(t *testing.T) {
	ref := "docker://10.0.2.100:5000/acme/system:stable"
	ack, err := dhcpv4.New(
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 0, 2, 15)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 0, 2, 2)),
		dhcpv4.WithServerIP(net.IPv4(10, 0, 2, 2)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 2, 2))),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(DHCPOptionManifest), []byte(ref))),
	)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := dhcpv4.FromBytes(ack.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	l, err := LeaseFromACK("enp0s2", wire)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr != netip.MustParsePrefix("10.0.2.15/24") || l.Router != netip.MustParseAddr("10.0.2.2") ||
		l.Server != netip.MustParseAddr("10.0.2.2") || l.Manifest != ref || l.Interface != "enp0s2" {
		t.Fatalf("lease %+v", l)
	}
	// Without the option, mask or router.
	bare, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeAck), dhcpv4.WithYourIP(net.IPv4(192, 168, 1, 9)))
	if l, err = LeaseFromACK("eth0", bare); err != nil || l.Manifest != "" || l.Router.IsValid() || l.Addr.Bits() != 24 {
		t.Fatalf("bare lease %+v, %v", l, err)
	}
	none, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
	if _, err := LeaseFromACK("eth0", none); err == nil || !strings.Contains(err.Error(), "no address") {
		t.Fatalf("an answer without an address: %v", err)
	}
}

func TestRetryBounded(t *testing.T) {
	var lines []string
	printf := func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }
	calls := 0
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	err := Retry(3, 0, printf, "registry 10.0.2.100:5000", func() error { calls++; return refused })
	if calls != 3 || err == nil || !strings.Contains(err.Error(), "registry 10.0.2.100:5000 unreachable: 3 attempts failed") || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("calls %d, err %v", calls, err)
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "attempt 1 of 3 failed") || !strings.Contains(lines[1], "attempt 2 of 3 failed") {
		t.Fatalf("printed %q", lines)
	}
	// Not transient: one call, the error as it is.
	calls, lines = 0, nil
	corrupt := fmt.Errorf("pull blob x: %w", registry.ErrCorrupt)
	if err := Retry(5, 0, printf, "r", func() error { calls++; return corrupt }); calls != 1 || err != corrupt || len(lines) != 0 {
		t.Fatalf("corrupt blob: calls %d, err %v, printed %q", calls, err, lines)
	}
	// Success on the second attempt.
	calls = 0
	if err := Retry(5, 0, printf, "r", func() error {
		calls++
		if calls == 1 {
			return refused
		}
		return nil
	}); err != nil || calls != 2 {
		t.Fatalf("calls %d, err %v", calls, err)
	}
}

func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("x: %w", syscall.ECONNRESET), true},
		{&registry.Error{Op: "pull manifest", Status: 503}, true},
		{&registry.Error{Op: "pull manifest", Status: 404}, false},
		{fmt.Errorf("x: %w", registry.ErrCorrupt), false},
		{fmt.Errorf("x: %w", registry.ErrNoValidSignature), false},
		{errors.New("product: manifest is for another product"), false},
	} {
		if got := Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
