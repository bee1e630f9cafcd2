package initrd

import (
	"fmt"
	"net/netip"
	"strings"
)

// Host files the initrd hands over (on /run, which it moves into the
// host): the manifest CA and product ID from the initrd, so that the
// host's supervisor verifies the same manifest with the same trust.
const (
	HostCAFile        = "/run/vessel/manifest-ca.pem"
	HostProductIDFile = "/run/vessel/product-id"
)

// NetConfig is the static address the command line gives the first
// non-loopback interface: vessel.ip=ADDRESS/PREFIX (inside the signed UKI).
type NetConfig struct {
	Prefix netip.Prefix
}

// ParseNet reads vessel.ip= from a kernel command line (ok is false
// without one).
func ParseNet(cmdline string) (NetConfig, bool, error) {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "vessel.ip="); ok {
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() {
				return NetConfig{}, false, fmt.Errorf("vessel.ip=%s: want an IPv4 ADDRESS/PREFIX such as 10.0.2.15/24", v)
			}
			return NetConfig{Prefix: p}, true, nil
		}
	}
	return NetConfig{}, false, nil
}

// SupervisorArgs is the command the host's init runs as its one child:
// vessel up on the installed system with the initrd's trust.
func SupervisorArgs(productID string) []string {
	return []string{"vessel", "--root", HostDataDir, "up", "--ca", HostCAFile, "--product-id", productID}
}
