// Package netdir writes what a network-boot server serves to a diskless
// machine: the signed UKI under the name DHCP/PXE hands out, a record of
// what it is, and an example dnsmasq configuration. The UKI must be
// signed and its command line must name the manifest to boot
// (vessel.manifest=, see internal/initrd): the firmware checks the
// signature, the initrd checks everything it then pulls.
package netdir

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/boot/uki"
	"github.com/vesselos/vessel/internal/initrd"
)

// Files in the directory.
const (
	// BootFile is the UKI: the TFTP boot file name (DHCP option 67, qemu's
	// bootfile=) or the last part of an HTTP boot URL.
	BootFile = "bootx64.efi"
	// RecordFile describes the directory (the Result as JSON).
	RecordFile = "netboot.json"
	// DnsmasqFile is an example dnsmasq configuration serving the
	// directory over DHCP + TFTP.
	DnsmasqFile = "dnsmasq.conf"
)

// Options for Write.
type Options struct {
	UKI string // the signed UKI (vessel boot uki)
	Dir string // the directory to write (created; files in it replaced)
	// Cert, when set, must have made a valid signature of the UKI (the
	// db certificate the machines enforce).
	Cert *x509.Certificate
}

// Result says what was written.
type Result struct {
	Dir      string   `json:"dir"`
	BootFile string   `json:"bootFile"`
	Size     int      `json:"size"`
	SHA256   string   `json:"sha256"`
	Signers  []string `json:"signers"`
	Cmdline  string   `json:"cmdline"`
	// Manifest is the reference the command line names, or "dhcp" (DHCP
	// option ManifestOption).
	Manifest       string   `json:"manifest"`
	ManifestOption int      `json:"dhcpManifestOption"`
	ProductID      string   `json:"productId,omitempty"`
	Files          []string `json:"files"`
}

// Write checks the UKI and writes the directory.
func Write(o Options) (*Result, error) {
	img, err := os.ReadFile(o.UKI)
	if err != nil {
		return nil, fmt.Errorf("netdir: %w", err)
	}
	rep, err := uki.Inspect(img)
	if err != nil {
		return nil, fmt.Errorf("netdir: %s: %w", o.UKI, err)
	}
	if !rep.Valid() {
		return nil, fmt.Errorf("netdir: %s is not validly signed (vessel boot inspect shows why): Secure Boot firmware would refuse it", o.UKI)
	}
	if o.Cert != nil && !rep.SignedBy(o.Cert) {
		return nil, fmt.Errorf("netdir: %s has no valid signature by %s", o.UKI, o.Cert.Subject)
	}
	nb, err := initrd.ParseNetBoot(rep.Cmdline)
	if err != nil {
		return nil, fmt.Errorf("netdir: %s: command line: %w", o.UKI, err)
	}
	if nb == nil {
		return nil, fmt.Errorf("netdir: %s: its command line %q names no manifest (%sdocker://HOST/REPO@sha256:... or %sdhcp): it would look for a data partition, and a diskless machine has none", o.UKI, rep.Cmdline, initrd.OptManifest, initrd.OptManifest)
	}
	res := &Result{Dir: o.Dir, BootFile: BootFile, Size: rep.Size, SHA256: rep.SHA256, Cmdline: rep.Cmdline,
		Manifest: nb.Ref, ManifestOption: initrd.DHCPOptionManifest}
	if nb.FromDHCP {
		res.Manifest = "dhcp"
	}
	if rep.Initrd != nil {
		res.ProductID = rep.Initrd.ProductID
	}
	for _, s := range rep.Signatures {
		if s.SignatureValid && s.DigestMatches {
			res.Signers = append(res.Signers, s.Subject)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("netdir: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(o.Dir, BootFile), img, 0o644); err != nil {
		return nil, fmt.Errorf("netdir: write %s: %w", BootFile, err)
	}
	res.Files = []string{BootFile, DnsmasqFile, RecordFile}
	if err := atomicfile.Write(filepath.Join(o.Dir, DnsmasqFile), []byte(Dnsmasq(o.Dir, res.Manifest)), 0o644); err != nil {
		return nil, fmt.Errorf("netdir: write %s: %w", DnsmasqFile, err)
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(o.Dir, RecordFile), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("netdir: write %s: %w", RecordFile, err)
	}
	return res, nil
}

// Dnsmasq is an example dnsmasq configuration that serves dir by DHCP and
// TFTP to UEFI x86-64 PXE clients (client architecture 7); with
// manifest "dhcp" it also sends the reference in the manifest option.
func Dnsmasq(dir, manifest string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Serve %s to UEFI PXE clients (vessel boot netdir). Set the address range.\n", abs)
	b.WriteString("#dhcp-range=192.168.1.100,192.168.1.200,12h\n")
	b.WriteString("enable-tftp\n")
	fmt.Fprintf(&b, "tftp-root=%s\n", abs)
	b.WriteString("dhcp-match=set:efi-x86_64,option:client-arch,7\n")
	fmt.Fprintf(&b, "dhcp-boot=tag:efi-x86_64,%s\n", BootFile)
	if manifest == "dhcp" {
		fmt.Fprintf(&b, "# The UKI's command line says vessel.manifest=dhcp: the reference comes from option %d.\n", initrd.DHCPOptionManifest)
		fmt.Fprintf(&b, "dhcp-option=%d,\"docker://REGISTRY/REPO:TAG\"\n", initrd.DHCPOptionManifest)
	} else {
		fmt.Fprintf(&b, "# The UKI's command line names the manifest: %s\n", manifest)
	}
	return b.String()
}
