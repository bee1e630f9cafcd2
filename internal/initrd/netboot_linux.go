package initrd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netAttempts bounds the DHCP exchanges before the boot halts; each waits
// dhcpTimeout for an answer (nclient4 itself sends 3 times within it).
const (
	netAttempts = 5
	dhcpTimeout = 6 * time.Second
	linkWait    = 10 * time.Second
	randomWait  = 60 * time.Second
)

// waitRandom waits (bounded, visibly) until the kernel's random pool is
// ready: the DHCP client's transaction IDs and TLS read it through
// getrandom(2), which blocks until then. A TPM (its hwrng is built into
// Debian's kernel), RDRAND or a virtio-rng device seeds it early; without
// any, it may take long under emulation.
func waitRandom(printf func(string, ...any), wait time.Duration) error {
	b := make([]byte, 1)
	if _, err := unix.Getrandom(b, unix.GRND_NONBLOCK); err == nil {
		return nil
	}
	printf("waiting for the kernel's random pool (seeded by a TPM, RDRAND or virtio-rng; none so far)")
	done := make(chan error, 1)
	go func() {
		_, err := unix.Getrandom(b, 0)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(wait):
		return fmt.Errorf("the kernel's random pool was not ready after %v (no TPM, RDRAND or virtio-rng seeds it): DHCP and TLS need it", wait)
	}
}

// netUp brings lo and the first Ethernet interface up and configures the
// interface by DHCP (github.com/insomniacslk/dhcp nclient4 over a packet
// socket): address, prefix and a default route through the router.
func (linuxSystem) netUp(ctx context.Context, printf func(string, ...any)) (*Lease, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		if err := netlink.LinkSetUp(lo); err != nil {
			return nil, fmt.Errorf("bring lo up: %w", err)
		}
	}
	if err := waitRandom(printf, randomWait); err != nil {
		return nil, err
	}
	link, err := waitEthernet(linkWait)
	if err != nil {
		return nil, err
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", name, err)
	}
	var lease *Lease
	err = Retry(netAttempts, time.Second, printf, "DHCP on "+name, func() error {
		c, err := nclient4.New(name, nclient4.WithTimeout(dhcpTimeout/3), nclient4.WithRetry(3))
		if err != nil {
			return fmt.Errorf("DHCP client on %s: %w", name, err)
		}
		defer c.Close()
		l, err := c.Request(ctx, dhcpv4.WithRequestedOptions(dhcpv4.GenericOptionCode(DHCPOptionManifest)))
		if err != nil {
			// No answer is a timeout: worth another attempt.
			return &net.OpError{Op: "dhcp", Net: "udp4", Err: err}
		}
		lease, err = LeaseFromACK(name, l.ACK)
		return err
	})
	if err != nil {
		return nil, err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: lease.Addr.Addr().AsSlice(), Mask: net.CIDRMask(lease.Addr.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("set address %s on %s: %w", lease.Addr, name, err)
	}
	if lease.Router.IsValid() {
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: lease.Router.AsSlice()}); err != nil {
			return nil, fmt.Errorf("default route via %s on %s: %w", lease.Router, name, err)
		}
	}
	return lease, nil
}

// waitEthernet returns the first (by name) non-loopback interface with a
// hardware address, waiting for the driver at most wait.
func waitEthernet(wait time.Duration) (netlink.Link, error) {
	start := time.Now()
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list network interfaces: %w", err)
		}
		sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Name < links[j].Attrs().Name })
		for _, l := range links {
			if l.Attrs().Flags&net.FlagLoopback == 0 && len(l.Attrs().HardwareAddr) == 6 {
				return l, nil
			}
		}
		if time.Since(start) > wait {
			return nil, errors.New("no network interface appeared in " + wait.String() + " (is the NIC's driver, e.g. virtio_net, in the initrd?)")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
