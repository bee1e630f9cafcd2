package initrd

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/vesselos/vessel/internal/lazyre"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// Paths of the verified boot (issue 14).
const (
	// CAFile is the manifest-signing CA baked into the initrd (inside the
	// signed UKI, so the firmware vouches for it).
	CAFile = "/etc/vessel/manifest-ca.pem"
	// DataMount is where the initrd mounts the data partition, read-only.
	DataMount = "/data"
	// NewRoot is where the host root is assembled before switch_root.
	NewRoot = "/sysroot"
	// HostInit is what the initrd executes in the new root.
	HostInit = "/sbin/init"
	// HostDataDir is where the data partition appears in the host (the
	// store's default root, /var/lib/vessel).
	HostDataDir = "/var/lib/vessel"
	// RunDir is the mount manager's run directory: on the initrd's /run
	// tmpfs, which moves into the host with the layer mounts and the
	// overlay's upper directory.
	RunDir = "/run/vessel"
	// BootRecordFile tells the host what the initrd verified and mounted.
	BootRecordFile = "/run/vessel/boot.json"
	// HostMountID names the host root's mount record.
	HostMountID = "host"
)

// BootRecord is what the initrd verified and mounted, for the host's
// init: written to BootRecordFile just before switch_root.
type BootRecord struct {
	Product  string        `json:"product"`
	Version  int64         `json:"version"`
	Manifest digest.Digest `json:"manifest"`
	Signer   string        `json:"signer"`
	Host     string        `json:"host"`       // the host image's ref
	HostID   digest.Digest `json:"hostDigest"` // its manifest digest
	Layers   []BootLayer   `json:"layers"`     // bottom first
	DataDev  string        `json:"dataDevice"`
	Mode     string        `json:"mode"`
	// The update slot booted (issue 17): its name ("" without a slot
	// record), whether this boot is a trial, and the signed manifest
	// (relative to the data partition) the host's supervisor runs.
	Slot   string `json:"slot,omitempty"`
	Trial  bool   `json:"trial,omitempty"`
	Signed string `json:"signed,omitempty"`
	// Uptimes (seconds since the kernel started) at the stage's start and
	// at switch_root.
	Started    float64 `json:"started"`
	SwitchRoot float64 `json:"switchRoot"`
	// TPM is what the TPM step did (nil: the initrd has no policy key).
	TPM *TPMReport `json:"tpm,omitempty"`
}

// BootLayer is one host layer and its dm-verity device.
type BootLayer struct {
	Digest string `json:"digest"`
	Verity string `json:"verity,omitempty"` // device-mapper name
	Root   string `json:"root,omitempty"`   // verity root hash
}

// VerifyData checks the installed system on the data partition mounted at
// dir: system/current.json names a signed manifest, which must verify with
// the initrd's CAs and product ID by the policy of `vessel manifest verify
// --images` (signature, chain, product, every image in the store with
// verity layers, and no version lower than the one recorded as accepted
// on the partition). Nothing is recorded: the partition is read-only here.
func VerifyData(dir string, cas []*x509.Certificate, productID string, at time.Time) (*trust.VerifiedManifest, *store.Store, error) {
	cur, err := registry.ReadCurrent(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("installed system: %w", err)
	}
	if !filepath.IsLocal(cur.Signed) {
		return nil, nil, fmt.Errorf("installed system: %s names signed manifest %q outside the data partition", registry.CurrentPath(dir), cur.Signed)
	}
	signed, err := os.ReadFile(filepath.Join(dir, cur.Signed))
	if err != nil {
		return nil, nil, fmt.Errorf("installed system: signed manifest: %w", err)
	}
	st, err := store.OpenLayout(filepath.Join(dir, "oci"))
	if err != nil {
		return nil, nil, fmt.Errorf("installed system: image store: %w", err)
	}
	vm, err := trust.Verify(signed, trust.Options{CAs: cas, ProductID: productID, At: at,
		Versions: trust.OpenVersions(dir), Images: st})
	if err != nil {
		return nil, nil, fmt.Errorf("system manifest %s: %w", cur.Signed, err)
	}
	if vm.Digest() != cur.Digest {
		return nil, nil, fmt.Errorf("system manifest %s is %s, but %s names %s", cur.Signed, vm.Digest(), registry.CurrentPath(dir), cur.Digest)
	}
	if vm.Manifest().Hostfs == nil {
		return nil, nil, fmt.Errorf("system manifest %s (product %s version %d) names no host image (hostfs in system.yaml): nothing to boot", vm.Digest(), vm.ProductID(), vm.Version())
	}
	return vm, st, nil
}

// SwitchRoot is the switch to the host root as data: mounts moved from the
// initrd into the new root (in order), then the initrd's own files are
// deleted, the new root is moved onto / and chrooted into, and Init is
// executed with Argv and Env as PID 1. Watchdog, when not 0, is the
// armed watchdog's descriptor: kept open across the exec and pinged just
// before it (Env names it for the host's init).
type SwitchRoot struct {
	NewRoot  string
	Moves    []Mount // Source: where it is now; Target: where it goes
	Init     string
	Argv     []string
	Env      []string
	Watchdog int
}

// NewSwitchRoot is the plan for the host root at newRoot.
func NewSwitchRoot(newRoot string) SwitchRoot {
	p := SwitchRoot{NewRoot: newRoot, Init: HostInit, Argv: []string{HostInit}, Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"}}
	for _, m := range [][2]string{{"/dev", "/dev"}, {"/proc", "/proc"}, {"/sys", "/sys"}, {"/run", "/run"}, {DataMount, HostDataDir}} {
		p.Moves = append(p.Moves, Mount{Source: m[0], Target: newRoot + m[1], Flags: msMove})
	}
	return p
}

// Corruption is a dm-verity error the kernel logged.
type Corruption struct {
	Device string // MAJOR:MINOR of the data device (a loop device)
	Kind   string // data or metadata
	Block  uint64
}

var verityCorrupt = lazyre.New(`verity: (\d+:\d+): (data|metadata) block (\d+) is corrupted`)

// Corruptions finds dm-verity's "data block N is corrupted" lines in
// kernel log text.
func Corruptions(log string) []Corruption {
	var out []Corruption
	for _, m := range verityCorrupt.FindAllStringSubmatch(log, -1) {
		n, err := strconv.ParseUint(m[3], 10, 64)
		if err != nil {
			continue
		}
		c := Corruption{Device: m[1], Kind: m[2], Block: n}
		if len(out) == 0 || out[len(out)-1] != c {
			out = append(out, c)
		}
	}
	return out
}

// describe names a corruption for the console: the block, and the layer
// blob the loop device reads (when the device still exists).
func (c Corruption) describe(root string) string {
	s := fmt.Sprintf("dm-verity: %s block %d is corrupted (device %s", c.Kind, c.Block, c.Device)
	if b, err := os.ReadFile(root + "/sys/dev/block/" + c.Device + "/loop/backing_file"); err == nil {
		s += ", layer sha256:" + filepath.Base(strings.TrimSpace(string(b)))
	}
	return s + ")"
}

func writeBootRecord(path string, r BootRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// ReadBootRecord reads what the initrd verified (in the host).
func ReadBootRecord(path string) (*BootRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r BootRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
