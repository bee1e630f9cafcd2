// Package initrd builds vessel's initrd: a newc cpio archive holding the
// static vessel binary as /init, /dev/console, the kernel modules the boot
// needs (in load order), the manifest-signing CA and the product ID. There
// is no shell and no busybox: /init is vessel (see package
// internal/initrd for what it does as PID 1).
//
// The archive is computed as data first (Plan: a sorted list of entries)
// and then written; the same inputs give the same bytes: fixed mtimes,
// uid/gid 0, sorted names, inode numbers by position.
package initrd

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/vesselos/vessel/internal/boot/kmod"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// Paths inside the initrd. The uefi side (vessel boot inspect) and the
// PID-1 stage read these; keep them in one place.
const (
	InitPath      = "init"
	CAPath        = "etc/vessel/manifest-ca.pem"
	ProductIDPath = "etc/vessel/product-id"
	ModulesPath   = "etc/vessel/modules" // module load order: one initrd path per line
	ConsolePath   = "dev/console"
	// PolicyKeyPath is the TPM policy-signing public key (optional).
	PolicyKeyPath = "etc/vessel/tpm-policy.pem"
)

// The network boot's registry trust and credentials (optional).
const (
	RegistryCAPath   = "etc/vessel/registry-ca.pem"
	RegistryAuthPath = "etc/vessel/registry-auth.json"
)

// DefaultModules are what the boot needs on Debian's kernel: virtio
// (PCI, block, network), loop devices (the layer blobs), dm-verity, the layer filesystems, overlay,
// efivarfs, the data partition's ext4, the ESP's vfat (with the code page
// and character set it mounts with: an update writes UKIs there), and the ACPI power button with
// evdev (the host's init powers off cleanly when it is pressed), and the
// i6300ESB watchdog (qemu's -device i6300esb; vessel.watchdog= arms it;
// loading it without the device is harmless). Built-in ones are skipped.
var DefaultModules = []string{
	"virtio_pci", "virtio_blk", "virtio_net",
	"loop", "dm_verity", "dm_crypt", "xts", "squashfs", "erofs", "overlay",
	"efivarfs", "ext4", "button", "evdev", "tpm_tis", "tpm_crb",
	"vfat", "nls_cp437", "nls_ascii",
	"i6300esb",
}

// MTime is the modification time of every entry (2000-01-01T00:00:00Z):
// fixed, so the archive is reproducible.
const MTime = 946684800

// Compression of the archive.
const (
	CompressNone = "none"
	CompressZstd = "zstd"
)

// Options say what goes into the initrd.
type Options struct {
	Vessel    string   // the static vessel binary (becomes /init)
	CA        string   // manifest-signing CA certificate(s), PEM
	ProductID string   // product UUID
	Modules   string   // /lib/modules/VERSION
	Names     []string // modules to include (with their dependencies); DefaultModules when nil
	Compress  string   // CompressZstd (default) or CompressNone
	// PolicyKey is the TPM policy-signing public key (PEM), optional:
	// with it the initrd uses the TPM (docs/tpm.md).
	PolicyKey string
	// For the network boot (optional): the registry's TLS CA (PEM) and
	// credentials (containers auth.json), at RegistryCAPath and
	// RegistryAuthPath.
	RegistryCA, RegistryAuth string
}

// Entry is one file, directory or device of the archive.
type Entry struct {
	Name   string // relative, no leading slash
	Mode   uint64 // cpio mode: type bits and permissions
	Data   []byte // regular files
	Rmajor uint64 // devices
	Rminor uint64
}

// Plan is the archive's content as data.
type Plan struct {
	Entries  []Entry  // sorted by name; parents before children
	Modules  []string // module names in load order
	Builtin  []string // requested modules the kernel has built in
	Kernel   string   // kernel release of the modules tree
	Compress string
}

// Make computes the plan: it reads and checks every input (the vessel
// binary must be a static ELF executable, the CA a CA certificate, the
// product ID a UUID) and resolves the modules.
func Make(o Options) (*Plan, error) {
	if o.Vessel == "" || o.CA == "" || o.ProductID == "" || o.Modules == "" {
		return nil, errors.New("initrd: the vessel binary, CA, product ID and modules tree are all required")
	}
	comp := o.Compress
	if comp == "" {
		comp = CompressZstd
	}
	if comp != CompressNone && comp != CompressZstd {
		return nil, fmt.Errorf("initrd: compression %q: want none or zstd", o.Compress)
	}
	bin, err := os.ReadFile(o.Vessel)
	if err != nil {
		return nil, fmt.Errorf("initrd: vessel binary: %w", err)
	}
	if err := checkStatic(bin); err != nil {
		return nil, fmt.Errorf("initrd: vessel binary %s: %w", o.Vessel, err)
	}
	caPEM, err := os.ReadFile(o.CA)
	if err != nil {
		return nil, fmt.Errorf("initrd: CA: %w", err)
	}
	cas, err := trust.ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("initrd: CA %s: %w", o.CA, err)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("initrd: CA %s: no PEM certificate in it", o.CA)
	}
	for _, c := range cas {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("initrd: CA %s: %q is not a CA certificate (CA:FALSE): pass the manifest-signing CA", o.CA, c.Subject.CommonName)
		}
	}
	pid, err := trust.ParseUUID(o.ProductID)
	if err != nil {
		return nil, fmt.Errorf("initrd: product ID: %w", err)
	}
	tree, err := kmod.Open(o.Modules)
	if err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	names := o.Names
	if names == nil {
		names = DefaultModules
	}
	res, err := tree.Resolve(names)
	if err != nil {
		return nil, fmt.Errorf("initrd: kernel %s: %w", tree.Version, err)
	}

	p := &Plan{Kernel: tree.Version, Builtin: res.Builtin, Compress: comp}
	files := map[string]Entry{}
	add := func(e Entry) {
		files[e.Name] = e
		for d := path.Dir(e.Name); d != "."; d = path.Dir(d) {
			if _, ok := files[d]; !ok {
				files[d] = Entry{Name: d, Mode: cpio.S_IFDIR | 0o755}
			}
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "mnt"} {
		add(Entry{Name: d, Mode: cpio.S_IFDIR | 0o755})
	}
	add(Entry{Name: "tmp", Mode: cpio.S_IFDIR | 0o1777})
	add(Entry{Name: ConsolePath, Mode: cpio.S_IFCHR | 0o600, Rmajor: 5, Rminor: 1})
	add(Entry{Name: InitPath, Mode: cpio.S_IFREG | 0o755, Data: bin})
	add(Entry{Name: CAPath, Mode: cpio.S_IFREG | 0o644, Data: caPEM})
	add(Entry{Name: ProductIDPath, Mode: cpio.S_IFREG | 0o644, Data: []byte(pid + "\n")})
	if o.PolicyKey != "" {
		b, err := os.ReadFile(o.PolicyKey)
		if err != nil {
			return nil, fmt.Errorf("initrd: TPM policy key: %w", err)
		}
		if _, err := tpm.ParsePublicKeyPEM(b); err != nil {
			return nil, fmt.Errorf("initrd: TPM policy key %s: %w", o.PolicyKey, err)
		}
		add(Entry{Name: PolicyKeyPath, Mode: cpio.S_IFREG | 0o644, Data: b})
	}
	if o.RegistryCA != "" {
		b, err := os.ReadFile(o.RegistryCA)
		if err != nil {
			return nil, fmt.Errorf("initrd: registry CA: %w", err)
		}
		if _, err := trust.ParseCerts(b); err != nil {
			return nil, fmt.Errorf("initrd: registry CA %s: %w", o.RegistryCA, err)
		}
		add(Entry{Name: RegistryCAPath, Mode: cpio.S_IFREG | 0o644, Data: b})
	}
	if o.RegistryAuth != "" {
		b, err := os.ReadFile(o.RegistryAuth)
		if err != nil {
			return nil, fmt.Errorf("initrd: registry credentials: %w", err)
		}
		if !json.Valid(b) {
			return nil, fmt.Errorf("initrd: registry credentials %s: not JSON (want a containers auth.json)", o.RegistryAuth)
		}
		add(Entry{Name: RegistryAuthPath, Mode: cpio.S_IFREG | 0o600, Data: b})
	}
	var order strings.Builder
	for _, m := range res.Modules {
		b, err := m.Bytes()
		if err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
		add(Entry{Name: m.LoadPath(), Mode: cpio.S_IFREG | 0o644, Data: b})
		fmt.Fprintf(&order, "/%s\n", m.LoadPath())
		p.Modules = append(p.Modules, m.Name)
	}
	add(Entry{Name: ModulesPath, Mode: cpio.S_IFREG | 0o644, Data: []byte(order.String())})
	for _, e := range files {
		p.Entries = append(p.Entries, e)
	}
	sort.Slice(p.Entries, func(i, j int) bool { return p.Entries[i].Name < p.Entries[j].Name })
	return p, nil
}

// checkStatic refuses anything but a statically linked ELF executable for
// the build machine's kind of kernel (no interpreter: the initrd has no
// libc or loader).
func checkStatic(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %v is not an executable", f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (has an ELF interpreter): /init must be a static binary: build vessel with CGO_ENABLED=0 (make build) and use that")
		}
	}
	return nil
}

// Write writes the archive (compressed as planned).
func (p *Plan) Write(w io.Writer) error {
	var zw *zstd.Encoder
	if p.Compress == CompressZstd {
		var err error
		// One goroutine and a fixed level: the same bytes every time.
		zw, err = zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
		if err != nil {
			return err
		}
		w = zw
	}
	rw := cpio.Newc.Writer(w)
	for i, e := range p.Entries {
		info := cpio.Info{
			Ino:    uint64(i + 1),
			Mode:   e.Mode,
			NLink:  1,
			MTime:  MTime,
			Rmajor: e.Rmajor,
			Rminor: e.Rminor,
			Name:   e.Name,
		}
		if e.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			info.NLink = 2
		}
		var rec cpio.Record
		if e.Mode&cpio.S_IFMT == cpio.S_IFREG {
			rec = cpio.StaticRecord(e.Data, info)
		} else {
			rec = cpio.Record{Info: info}
		}
		if err := rw.WriteRecord(rec); err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return err
	}
	if zw != nil {
		return zw.Close()
	}
	return nil
}

// Size is the uncompressed content size (file data only).
func (p *Plan) Size() int64 {
	var n int64
	for _, e := range p.Entries {
		n += int64(len(e.Data))
	}
	return n
}

// Build makes the plan and writes it to path (atomically: a temp file
// renamed into place).
func Build(o Options, out string) (*Plan, error) {
	p, err := Make(o)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(out), ".initrd-*")
	if err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	defer os.Remove(f.Name())
	if err := p.Write(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("initrd: write %s: %w", out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return nil, fmt.Errorf("initrd: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("initrd: write %s: %w", out, err)
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	return p, nil
}
