// Package disk writes a bootable vessel disk: a GPT with an EFI system
// partition holding the signed UKI as the removable-media boot path
// (/EFI/BOOT/BOOTX64.EFI) and a Vessel data partition holding a store (an
// OCI layout) with every image of a signed system manifest and that
// manifest, laid out like a store after 'vessel install'.
//
// The manifest is verified first (trust.Verify with the images checked in
// the source store) and the copy of every image is verified again down to
// every verity block in the new store: a disk is never written from a
// manifest or an image that does not verify.
//
// The data partition is found at boot by its partition name (DataLabel) or
// type GUID (DataType), never by device name. The GPT is written in Go
// (go-diskfs); the two filesystems are made as partition-sized files by
// e2fsprogs (mkfs.ext4 -d from a staging directory) and dosfstools/mtools
// (mkfs.vfat, mmd, mcopy), which need no root, then copied into place.
package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// Partition identities. DataType is vessel's own GPT partition type GUID
// for the data partition (random, fixed here); DataLabel is its GPT
// partition name and its ext4 label.
const (
	DataType  = "9DF27203-68D2-4E7D-99C4-417308F53EF0"
	DataLabel = "vessel-data"
	ESPLabel  = "EFI System Partition" // GPT partition name of the ESP
	// StateType and StateLabel identify the optional state partition: an
	// empty ext4 filesystem 16 MiB into it, which the initrd turns into an
	// encrypted LUKS2 volume at first boot (docs/tpm.md).
	StateType  = "5B1E4C2A-8F0D-4D6B-9A3E-7C21D4E8F6A1"
	StateLabel = "vessel-state"
	// StateFSOffset is where the plain filesystem starts in the state
	// partition: luks2.DataOffset, the LUKS2 header and keyslot area before it.
	StateFSOffset = 16 * mib
	// PoliciesDir is where signed TPM policies go on the data partition.
	PoliciesDir = "tpm/policies"
	ESPVolume   = "VESSEL-ESP" // FAT volume label
	BootPath    = "/EFI/BOOT/BOOTX64.EFI"
)

const (
	sector      = 512
	mib         = 1 << 20
	firstSector = 2048 // 1 MiB alignment
	gptSectors  = 34   // backup GPT header + 32 sectors of entries, plus one spare
	// DefaultESPSize holds a UKI with a large initrd twice over (an update
	// can write the new one beside the old).
	DefaultESPSize = 256 * mib
	minDataSize    = 64 * mib
)

// Options say what goes on the disk.
type Options struct {
	Signed  []byte        // the signed system manifest
	Trust   trust.Options // CAs, product ID, CRL, time (Images, Versions, Record are set here)
	Source  *store.Store  // the store holding every image the manifest lists
	UKI     string        // the signed UKI
	Output  string        // a file (created or replaced) or a block device
	Size    int64         // bytes, for a file; a block device's own size is used
	ESPSize int64         // default DefaultESPSize
	// StateSize, when not 0, adds the state partition (at least 32 MiB)
	// at the end of the disk, taken from the data partition.
	StateSize int64
	// Policies are signed TPM policy files copied to PoliciesDir on the
	// data partition (the initrd unseals with the one for its PCR7).
	Policies []string
}

// Result describes the written disk.
type Result struct {
	Output   string           `json:"output"`
	Size     int64            `json:"size"`
	Product  string           `json:"product"`
	Version  int64            `json:"version"`
	Manifest string           `json:"manifest"` // digest of the system manifest
	Images   []InstalledImage `json:"images"`
	ESP      PartitionInfo    `json:"esp"`
	Data     PartitionInfo    `json:"data"`
	State    *PartitionInfo   `json:"state,omitempty"`
}

// InstalledImage is one image copied to the data partition.
type InstalledImage = registry.InstalledImage

// PartitionInfo locates a partition.
type PartitionInfo struct {
	Index  int    `json:"index"`
	Start  int64  `json:"start"` // bytes
	Size   int64  `json:"size"`  // bytes
	Type   string `json:"type"`
	Name   string `json:"name"`
	FSType string `json:"fsType"`
}

// Write verifies the manifest and its images, stages the data partition,
// and writes the disk.
func Write(ctx context.Context, o Options) (*Result, error) {
	if o.Output == "" || o.UKI == "" || o.Source == nil {
		return nil, errors.New("disk: the output, the UKI and the source store are required")
	}
	topts := o.Trust
	topts.Images, topts.Versions, topts.Record = o.Source, nil, false
	vm, err := trust.Verify(o.Signed, topts)
	if err != nil {
		return nil, fmt.Errorf("disk: the system manifest does not verify: %w", err)
	}
	uki, err := os.ReadFile(o.UKI) // checked here; mcopy copies the file
	if err != nil {
		return nil, fmt.Errorf("disk: UKI: %w", err)
	}
	if len(uki) < 2 || string(uki[:2]) != "MZ" {
		return nil, fmt.Errorf("disk: UKI %s is not a PE/EFI image", o.UKI)
	}
	espSize := o.ESPSize
	if espSize == 0 {
		espSize = DefaultESPSize
	}
	espSize = (espSize + mib - 1) / mib * mib
	if int64(len(uki)) > espSize-8*mib {
		return nil, fmt.Errorf("disk: UKI %s (%d bytes) does not fit an ESP of %d MiB: make the ESP larger", o.UKI, len(uki), espSize/mib)
	}

	size, isDev, err := outputSize(o.Output, o.Size)
	if err != nil {
		return nil, err
	}
	size = size / sector * sector
	espStart := int64(firstSector) * sector
	dataStart := espStart + espSize
	dataEnd := (size/sector - gptSectors) / (mib / sector) * mib // exclusive, 1 MiB aligned, before the backup GPT
	stateSize := (o.StateSize + mib - 1) / mib * mib
	if o.StateSize != 0 && stateSize < StateFSOffset+16*mib {
		return nil, fmt.Errorf("disk: state partition of %d MiB: want at least %d MiB (16 MiB of LUKS2 header, 16 MiB of filesystem)", stateSize/mib, (StateFSOffset+16*mib)/mib)
	}
	dataEnd -= stateSize
	dataSize := dataEnd - dataStart
	if dataSize < minDataSize {
		return nil, fmt.Errorf("disk: %d MiB is too small: the ESP takes %d MiB and the data partition needs at least %d MiB", size/mib, espSize/mib, minDataSize/mib)
	}

	workDir := filepath.Dir(o.Output) // the image is renamed into place: stage beside it
	if isDev {
		workDir = ""
	}
	work, err := os.MkdirTemp(workDir, ".vessel-disk-")
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	defer os.RemoveAll(work)

	stage := filepath.Join(work, "data")
	res := &Result{Output: o.Output, Size: size, Product: vm.ProductID(), Version: vm.Version(), Manifest: vm.Digest().String()}
	if res.Images, err = stageData(ctx, stage, vm, o); err != nil {
		return nil, fmt.Errorf("disk: data partition: %w", err)
	}
	ext4 := filepath.Join(work, "data.ext4")
	if err := mkfsExt4(ctx, stage, ext4, dataSize); err != nil {
		return nil, fmt.Errorf("disk: data partition: %w", err)
	}

	res.ESP = PartitionInfo{Index: 1, Start: espStart, Size: espSize, Type: string(gpt.EFISystemPartition), Name: ESPLabel, FSType: "vfat"}
	res.Data = PartitionInfo{Index: 2, Start: dataStart, Size: dataSize, Type: DataType, Name: DataLabel, FSType: "ext4"}
	state := ""
	if stateSize != 0 {
		res.State = &PartitionInfo{Index: 3, Start: dataEnd, Size: stateSize, Type: StateType, Name: StateLabel, FSType: "ext4 (LUKS2 after first boot)"}
		state = filepath.Join(work, "state.img")
		if err := mkState(ctx, filepath.Join(work, "state.ext4"), state, stateSize); err != nil {
			return nil, fmt.Errorf("disk: state partition: %w", err)
		}
	}
	esp := filepath.Join(work, "esp.vfat")
	if err := mkfsESP(ctx, o.UKI, esp, espSize); err != nil {
		return nil, fmt.Errorf("disk: ESP: %w", err)
	}
	// The whole disk is laid out in a sparse file first: go-diskfs writes
	// the GPT to a file without asking the kernel to re-read it.
	img := filepath.Join(work, "disk.img")
	if err := writeImage(img, size, res, esp, ext4, state); err != nil {
		return nil, fmt.Errorf("disk: write %s: %w", o.Output, err)
	}
	if !isDev {
		if err := os.Rename(img, o.Output); err != nil {
			return nil, fmt.Errorf("disk: %w", err)
		}
		return res, nil
	}
	if err := writeDevice(o.Output, img, res, esp, ext4, state); err != nil {
		return nil, fmt.Errorf("disk: write %s: %w", o.Output, err)
	}
	return res, nil
}

// outputSize returns the disk size: a block device's own, or the requested
// one for a file.
func outputSize(path string, want int64) (int64, bool, error) {
	st, err := os.Stat(path)
	if err == nil && st.Mode()&os.ModeDevice != 0 {
		f, err := os.Open(path)
		if err != nil {
			return 0, true, fmt.Errorf("disk: %w", err)
		}
		defer f.Close()
		n, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, true, fmt.Errorf("disk: size of %s: %w", path, err)
		}
		return n, true, nil
	}
	if err == nil && !st.Mode().IsRegular() {
		return 0, false, fmt.Errorf("disk: %s is neither a regular file nor a block device", path)
	}
	if want <= 0 {
		return 0, false, errors.New("disk: a disk image file needs a size")
	}
	return want, false, nil
}

// stageData lays out the data partition's content in dir the way 'vessel
// install' leaves a store: oci/ with every image tagged system/NAME:vVERSION,
// system/current.json, system/manifests/<hex>.signed, trust/versions.json.
func stageData(ctx context.Context, dir string, vm *trust.VerifiedManifest, o Options) ([]InstalledImage, error) {
	dst, err := store.Open(dir)
	if err != nil {
		return nil, err
	}
	m := vm.Manifest()
	names := []string{}
	if m.Hostfs != nil {
		names = append(names, "hostfs")
	}
	for _, s := range m.Services {
		names = append(names, s.Name)
	}
	var out []InstalledImage
	for i, img := range vm.Images() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		desc := ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Digest, Size: img.Size}
		if err := copyImage(o.Source, dst, desc); err != nil {
			return nil, fmt.Errorf("image %s: %w", names[i], err)
		}
		if _, err := image.Verify(dst, img.Digest.String(), nil); err != nil {
			return nil, fmt.Errorf("image %s: %w", names[i], err)
		}
		tag := fmt.Sprintf("system/%s:v%d", strings.ToLower(names[i]), vm.Version())
		if err := dst.Tag(tag, desc); err != nil {
			return nil, fmt.Errorf("image %s: %w", names[i], err)
		}
		out = append(out, InstalledImage{Name: names[i], Digest: img.Digest, Tag: tag})
	}
	// Verify again against the new store and record the version accepted.
	topts := o.Trust
	topts.Images, topts.Versions, topts.Record = dst, trust.OpenVersions(dir), true
	if vm, err = trust.Verify(o.Signed, topts); err != nil {
		return nil, err
	}
	cur := &registry.Current{Product: vm.ProductID(), ProductName: m.ProductName, Version: vm.Version(), Digest: vm.Digest(),
		Signer: vm.Signer().Subject.CommonName, Source: "vessel boot disk", Images: out}
	if err := registry.RecordCurrent(dir, cur, o.Signed); err != nil {
		return nil, err
	}
	for _, p := range o.Policies {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("TPM policy: %w", err)
		}
		if _, err := tpm.ParsePolicy(b); err != nil {
			return nil, fmt.Errorf("TPM policy %s: %w", p, err)
		}
		if err := os.MkdirAll(filepath.Join(dir, PoliciesDir), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, PoliciesDir, filepath.Base(p)), b, 0o644); err != nil {
			return nil, err
		}
	}
	return out, os.RemoveAll(filepath.Join(dir, "tmp"))
}

// copyImage copies an image manifest, its config and layers; every read
// from the source store is checked against its digest and size.
func copyImage(src, dst *store.Store, desc ocispec.Descriptor) error {
	b, err := src.ReadBlob(desc)
	if err != nil {
		return err
	}
	man, err := store.ParseManifest(b)
	if err != nil {
		return err
	}
	for _, d := range append([]ocispec.Descriptor{man.Config}, man.Layers...) {
		if dst.HasBlob(d.Digest) {
			continue
		}
		r, err := src.OpenBlob(d)
		if err != nil {
			return err
		}
		_, err = dst.PutBlob(r, d)
		if cerr := r.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	_, err = dst.PutBlob(bytes.NewReader(b), desc)
	return err
}

// mkfsExt4 makes an ext4 filesystem image of size bytes holding dir.
func mkfsExt4(ctx context.Context, dir, img string, size int64) error {
	if err := sparseFile(img, size); err != nil {
		return err
	}
	return tool(ctx, "mkfs.ext4", "-q", "-F", "-L", DataLabel, "-d", dir, "-E", "root_owner=0:0", img)
}

// mkfsESP makes a FAT32 filesystem image of size bytes with the UKI at
// BootPath (dosfstools and mtools: go-diskfs v1.9.4's FAT32 writer fails
// fsck.vfat, see docs/boot.md).
func mkfsESP(ctx context.Context, uki, img string, size int64) error {
	if err := sparseFile(img, size); err != nil {
		return err
	}
	steps := [][]string{
		{"mkfs.vfat", "-F", "32", "-n", ESPVolume, img},
		{"mmd", "-i", img, "::/EFI", "::/EFI/BOOT"},
		{"mcopy", "-i", img, uki, "::" + BootPath},
	}
	for _, a := range steps {
		if err := tool(ctx, a...); err != nil {
			return err
		}
	}
	return nil
}

// tool runs an external tool and names it (and its package) in errors.
func tool(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		pkg := map[string]string{"mkfs.vfat": "dosfstools", "mmd": "mtools", "mcopy": "mtools", "mkfs.ext4": "e2fsprogs"}[args[0]]
		return fmt.Errorf("%s not found: install %s (make deps)", args[0], pkg)
	}
	if err != nil {
		return fmt.Errorf("%s: %v: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeDisk writes the GPT (go-diskfs), then the ESP and data partition
// images into their partitions.
func writeImage(target string, size int64, res *Result, esp, ext4, state string) error {
	if err := sparseFile(target, size); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	table := &gpt.Table{
		LogicalSectorSize:  sector,
		PhysicalSectorSize: sector,
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: uint64(res.ESP.Start / sector), End: uint64((res.ESP.Start+res.ESP.Size)/sector - 1), Type: gpt.EFISystemPartition, Name: ESPLabel},
			{Index: 2, Start: uint64(res.Data.Start / sector), End: uint64((res.Data.Start+res.Data.Size)/sector - 1), Type: gpt.Type(DataType), Name: DataLabel},
		},
	}
	if res.State != nil {
		table.Partitions = append(table.Partitions, &gpt.Partition{Index: 3, Start: uint64(res.State.Start / sector),
			End: uint64((res.State.Start+res.State.Size)/sector - 1), Type: gpt.Type(StateType), Name: StateLabel})
	}
	// Only go-diskfs's gpt package: its root package would pull in every
	// filesystem it supports (size, and init time of vessel as /init).
	if err := table.Write(f, size); err != nil {
		f.Close()
		return fmt.Errorf("partition table: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := copyPartition(target, res.ESP.Start, esp, true); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	if res.State != nil {
		if err := copyPartition(target, res.State.Start, state, true); err != nil {
			return fmt.Errorf("state partition: %w", err)
		}
	}
	return copyPartition(target, res.Data.Start, ext4, true)
}

// mkState makes the state partition's content: zeros where the LUKS2
// header goes, then an empty ext4 filesystem (label StateLabel).
func mkState(ctx context.Context, fs, img string, size int64) error {
	if err := sparseFile(fs, size-StateFSOffset); err != nil {
		return err
	}
	if err := tool(ctx, "mkfs.ext4", "-q", "-F", "-L", StateLabel, "-E", "root_owner=0:0,lazy_itable_init=0", fs); err != nil {
		return err
	}
	if err := sparseFile(img, size); err != nil {
		return err
	}
	return copyPartition(img, StateFSOffset, fs, true)
}

// writeDevice writes the image's partition tables (the protective MBR and
// primary GPT before the first partition, the backup GPT after the last)
// and every byte of both partitions to a block device, then asks the
// kernel to re-read the table (best effort: a loop device without
// partition scanning refuses, and the table on the device is right
// regardless).
func writeDevice(dev, img string, res *Result, esp, ext4, state string) error {
	in, err := os.Open(img)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	head := res.ESP.Start
	tail := res.Data.Start + res.Data.Size
	if res.State != nil {
		tail = res.State.Start + res.State.Size
	}
	for _, r := range [][2]int64{{0, head}, {tail, res.Size - tail}} {
		if _, err := io.Copy(io.NewOffsetWriter(out, r[0]), io.NewSectionReader(in, r[0], r[1])); err != nil {
			out.Close()
			return fmt.Errorf("partition table: %w", err)
		}
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := copyPartition(dev, res.ESP.Start, esp, false); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	if err := copyPartition(dev, res.Data.Start, ext4, false); err != nil {
		return err
	}
	if res.State != nil {
		if err := copyPartition(dev, res.State.Start, state, false); err != nil {
			return fmt.Errorf("state partition: %w", err)
		}
	}
	rereadPartitions(dev)
	return nil
}

// copyPartition writes the file src at offset off of target. Into a new
// (sparse) image file, all-zero blocks are skipped; a block device gets
// every byte.
func copyPartition(target string, off int64, src string, sparse bool) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, mib)
	zero := make([]byte, mib)
	for pos := int64(0); ; {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 && !(sparse && bytes.Equal(buf[:n], zero[:n])) {
			if _, err := out.WriteAt(buf[:n], off+pos); err != nil {
				out.Close()
				return fmt.Errorf("data partition: %w", err)
			}
		}
		pos += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			out.Close()
			return rerr
		}
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
