package update

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/boot/disk"
	"github.com/vesselos/vessel/internal/boot/efivar"
	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/boot/uki"
)

// UKI slots (issue 17): when the kernel, initrd or command line changes,
// the update brings a new signed UKI. It is written to the ESP under a
// content-addressed name (EFI/vessel/<sha256 prefix>.efi: a file in use
// is never rewritten), gets its own UEFI boot entry, and the trial boots
// it once through BootNext, which the firmware deletes before it starts
// the entry: whatever happens to that boot (panic, hang, power cut), the
// next one follows BootOrder, i.e. the default slot's UKI. The initrd
// checks BootCurrent against the trial's entry (State.Boot). A confirmed
// trial's entry goes to the front of BootOrder.

// UKI is the signed kernel image of a slot, on the ESP.
type UKI struct {
	File   string `json:"file"`   // relative to the ESP's root
	SHA256 string `json:"sha256"` // of the file
	Entry  string `json:"entry"`  // the UEFI boot entry that starts it: Boot0004
}

// UKIDir is where staged UKIs go on the ESP; InstalledUKI is the one
// `vessel boot disk` installs (the removable-media path every firmware
// boots by default).
const (
	UKIDir       = "EFI/vessel"
	InstalledUKI = "EFI/BOOT/BOOTX64.EFI"
)

// TrialUKI is the trial slot's UKI when it differs from the default
// slot's (nil: no trial, or the trial boots the default's kernel).
func (s *State) TrialUKI() *UKI {
	if s.Trial == nil {
		return nil
	}
	u := s.Slots[s.Trial.Slot].UKI
	if u == nil {
		return nil
	}
	if d := s.Slots[s.Default].UKI; d != nil && d.Entry == u.Entry && d.SHA256 == u.SHA256 {
		return nil
	}
	return u
}

// Firmware is where UKIs are installed and how they are booted: the ESP,
// mounted at ESP, on Partition, and the UEFI variables.
type Firmware struct {
	ESP       string
	Partition efivar.Partition
	Vars      *efivar.Store
}

// OpenFirmware finds this machine's ESP (the GPT partition vessel's disks
// name "EFI System Partition") and its UEFI variables. With espDir "" it
// mounts the ESP on a new directory under /run; close unmounts it.
func OpenFirmware(espDir string) (fw *Firmware, closeFn func() error, err error) {
	vars, err := efivar.Open()
	if err != nil {
		return nil, nil, err
	}
	part, err := efivar.FindPartition("", disk.ESPLabel)
	if err != nil {
		return nil, nil, fmt.Errorf("find the ESP: %w", err)
	}
	fw = &Firmware{ESP: espDir, Partition: *part, Vars: vars}
	if espDir != "" {
		return fw, func() error { return nil }, nil
	}
	if err := os.MkdirAll("/run/vessel", 0o755); err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("/run/vessel", "esp-")
	if err != nil {
		return nil, nil, err
	}
	if err := unix.Mount(part.Device, dir, "vfat", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "umask=077"); err != nil {
		os.Remove(dir)
		return nil, nil, fmt.Errorf("mount the ESP %s at %s: %w", part.Device, dir, err)
	}
	fw.ESP = dir
	return fw, func() error {
		err := unix.Unmount(dir, 0)
		if err == nil {
			err = os.Remove(dir)
		}
		return err
	}, nil
}

// UsesUKIs reports whether a slot of the record at root has a UKI of its
// own (then rollback and confirm must tell the firmware).
func UsesUKIs(root string) bool {
	s, _, err := Read(root)
	if err != nil {
		return false
	}
	for _, sl := range s.Slots {
		if sl != nil && sl.UKI != nil {
			return true
		}
	}
	return false
}

// checkUKI refuses a UKI the firmware would not boot or that would not
// boot this product: not a UKI, not signed by a certificate in db, an
// initrd for another product or without a manifest CA.
func (fw *Firmware) checkUKI(img []byte, product string) (*uki.Report, error) {
	rep, err := uki.Inspect(img)
	if err != nil {
		return nil, err
	}
	if !rep.Valid() {
		return nil, errors.New("the UKI is not validly signed (vessel boot inspect shows its signatures)")
	}
	db, err := fw.db()
	if err != nil {
		return nil, err
	}
	signed := false
	for _, c := range db {
		if rep.SignedBy(c) {
			signed = true
		}
	}
	if !signed {
		return nil, fmt.Errorf("the UKI is signed by %s, which is not a certificate in this machine's db: the firmware would refuse it", rep.Signatures[0].Subject)
	}
	if rep.Initrd == nil || rep.Initrd.ManifestCA == "" {
		return nil, errors.New("the UKI's initrd holds no manifest-signing CA: it is not a vessel initrd")
	}
	if rep.Initrd.ProductID != product {
		return nil, fmt.Errorf("the UKI's initrd boots product %q, this machine runs %s", rep.Initrd.ProductID, product)
	}
	return rep, nil
}

// db returns the X.509 certificates of the firmware's db.
func (fw *Firmware) db() ([]*x509.Certificate, error) {
	_, b, err := fw.Vars.Get(secureboot.DB, secureboot.ImageSecurityDatabase)
	if err != nil {
		return nil, fmt.Errorf("read the firmware's db (is Secure Boot set up?): %w", err)
	}
	lists, err := secureboot.ParseLists(b)
	if err != nil {
		return nil, fmt.Errorf("the firmware's db: %w", err)
	}
	var out []*x509.Certificate
	for _, l := range lists {
		if l.Type != secureboot.CertX509 {
			continue
		}
		for _, s := range l.Signatures {
			if c, err := x509.ParseCertificate(s.Data); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// install writes img to the ESP under its content-addressed name and gives
// it a boot entry. FAT has no atomic rename, so nothing here relies on
// one: the file is written under a name nothing boots (.tmp), synced,
// renamed, the directory synced, and read back against its hash. A power
// cut leaves no file, a complete one (synced before the rename), or both
// names of one complete file; a torn file could never boot anyway (the
// firmware checks its signature). The slot record names the file only
// after this returns.
func (fw *Firmware) install(img []byte, desc string) (*UKI, error) {
	sum := fmt.Sprintf("%x", sha256.Sum256(img))
	rel := filepath.Join(UKIDir, sum[:16]+".efi")
	dir := filepath.Join(fw.ESP, UKIDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("install the UKI on the ESP: %w", err)
	}
	path := filepath.Join(fw.ESP, rel)
	if have, err := os.ReadFile(path); err != nil || !bytes.Equal(have, img) {
		if err := writeSynced(path, img); err != nil {
			return nil, fmt.Errorf("install the UKI on the ESP: %w", err)
		}
	}
	back, err := os.ReadFile(path)
	if err != nil || fmt.Sprintf("%x", sha256.Sum256(back)) != sum {
		return nil, fmt.Errorf("install the UKI on the ESP: %s does not read back as written (%v)", rel, err)
	}
	return fw.entry(rel, sum, desc)
}

// entry gives the file rel its boot entry.
func (fw *Firmware) entry(rel, sum, desc string) (*UKI, error) {
	n, err := fw.Vars.AddEntry(&efivar.LoadOption{Attributes: efivar.LoadOptionActive, Description: desc,
		FilePath: efivar.FileOnPartition(fw.Partition, rel)})
	if err != nil {
		return nil, fmt.Errorf("add the boot entry of %s: %w", rel, err)
	}
	return &UKI{File: rel, SHA256: sum, Entry: efivar.EntryName(n)}, nil
}

// installed describes the UKI `vessel boot disk` installed, with a boot
// entry of its own, for a default slot that has none yet.
func (fw *Firmware) installed() (*UKI, error) {
	b, err := os.ReadFile(filepath.Join(fw.ESP, InstalledUKI))
	if err != nil {
		return nil, fmt.Errorf("read the installed UKI: %w", err)
	}
	return fw.entry(InstalledUKI, fmt.Sprintf("%x", sha256.Sum256(b)), "vessel (installed)")
}

func writeSynced(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// armTrial sets the one-shot BootNext to the trial's UKI, or clears a
// pending one when the trial boots the default's UKI.
func (fw *Firmware) armTrial(s *State) error {
	u := s.TrialUKI()
	if u == nil {
		if err := fw.Vars.ClearBootNext(); err != nil {
			return fmt.Errorf("clear BootNext: %w", err)
		}
		return nil
	}
	n, err := efivar.ParseEntryName(u.Entry)
	if err != nil {
		return err
	}
	if err := fw.Vars.SetBootNext(n); err != nil {
		return fmt.Errorf("set BootNext to %s: %w", u.Entry, err)
	}
	return nil
}

// BootFirst makes the firmware boot u by default (a single BootOrder
// write).
func (fw *Firmware) BootFirst(u *UKI) error {
	if u == nil {
		return nil
	}
	n, err := efivar.ParseEntryName(u.Entry)
	if err != nil {
		return err
	}
	return fw.Vars.BootFirst(n)
}

// collectUKIs removes the staged UKIs (and their boot entries) no slot
// references; stray .tmp files of an interrupted install go too.
func (fw *Firmware) collectUKIs(s *State) ([]string, error) {
	keep := map[string]bool{}
	for _, sl := range s.Slots {
		if sl != nil && sl.UKI != nil {
			keep[sl.UKI.File] = true
		}
	}
	ents, err := os.ReadDir(filepath.Join(fw.ESP, UKIDir))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	entries, err := fw.Vars.Entries()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range ents {
		rel := filepath.Join(UKIDir, e.Name())
		if keep[rel] {
			continue
		}
		if !strings.HasSuffix(e.Name(), ".tmp") {
			path := efivar.FileOnPartition(fw.Partition, rel)
			for _, n := range entries {
				if o, err := fw.Vars.Entry(n); err == nil && bytes.Equal(o.FilePath, path) {
					if err := fw.Vars.RemoveEntry(n); err != nil {
						return removed, err
					}
				}
			}
		}
		if err := os.Remove(filepath.Join(fw.ESP, rel)); err != nil {
			return removed, err
		}
		removed = append(removed, rel)
	}
	return removed, nil
}
