package efivar

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// BlockClass is where the kernel lists block devices.
const BlockClass = "/sys/class/block"

// PartitionDevice looks through sysfs under root ("" for the real one; no
// udev needed) for the block device whose GPT partition name is name, and
// returns its kernel name (vda2).
func PartitionDevice(root, name string) (string, bool, error) {
	ents, err := os.ReadDir(root + BlockClass)
	if err != nil {
		return "", false, fmt.Errorf("list block devices: %w", err)
	}
	for _, e := range ents { // in name order
		b, err := os.ReadFile(filepath.Join(root+BlockClass, e.Name(), "uevent"))
		if err != nil {
			continue // a device going away
		}
		dev, part := "", ""
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "DEVNAME="); ok {
				dev = v
			}
			if v, ok := strings.CutPrefix(l, "PARTNAME="); ok {
				part = v
			}
		}
		if part == name && dev != "" {
			return dev, true, nil
		}
	}
	return "", false, nil
}

// FindPartition finds the partition whose GPT partition name is name
// (PartitionDevice) and returns where it is: its device, number, first
// sector and size from sysfs, and its unique GUID from the disk's GPT.
func FindPartition(root, name string) (*Partition, error) {
	dev, ok, err := PartitionDevice(root, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("no partition named %q (looked through %s)", name, root+BlockClass)
	}
	sys := filepath.Join(root+BlockClass, dev)
	num, err1 := readUint(filepath.Join(sys, "partition"))
	start, err2 := readUint(filepath.Join(sys, "start"))
	size, err3 := readUint(filepath.Join(sys, "size"))
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, fmt.Errorf("partition %s (%s): read its number, start and size from sysfs", dev, name)
	}
	// The parent directory of a partition in sysfs is its disk.
	link, err := filepath.EvalSymlinks(sys)
	if err != nil {
		return nil, fmt.Errorf("partition %s: %w", dev, err)
	}
	disk := filepath.Join(root, "/dev", filepath.Base(filepath.Dir(link)))
	p := &Partition{Number: uint32(num), Start: start, Size: size, Device: filepath.Join(root, "/dev", dev)}
	if p.GUID, err = partitionGUID(disk, p.Number); err != nil {
		return nil, fmt.Errorf("partition %s (%s): %w", p.Device, name, err)
	}
	return p, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// partitionGUID reads partition number's unique GUID from the GPT of disk.
func partitionGUID(disk string, number uint32) (secureboot.GUID, error) {
	f, err := os.Open(disk)
	if err != nil {
		return secureboot.GUID{}, fmt.Errorf("read the partition table: %w", err)
	}
	defer f.Close()
	t, err := gpt.Read(f, 512, 512)
	if err != nil {
		return secureboot.GUID{}, fmt.Errorf("read the GPT of %s: %w", disk, err)
	}
	for _, p := range t.Partitions {
		if p.Index == int(number) {
			return secureboot.ParseGUID(p.GUID)
		}
	}
	return secureboot.GUID{}, fmt.Errorf("the GPT of %s has no partition %d", disk, number)
}
