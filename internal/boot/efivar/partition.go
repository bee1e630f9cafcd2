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

// FindPartition finds the block device whose GPT partition name is name
// (through sysfs under root, "" for the real one) and returns where it
// is: its device, number, first sector and size from sysfs, and its
// unique GUID from the disk's GPT.
func FindPartition(root, name string) (*Partition, error) {
	class := filepath.Join(root, "/sys/class/block")
	ents, err := os.ReadDir(class)
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(class, e.Name(), "uevent"))
		if err != nil || !strings.Contains(string(b), "\nPARTNAME="+name+"\n") {
			continue
		}
		num, err1 := readUint(filepath.Join(class, e.Name(), "partition"))
		start, err2 := readUint(filepath.Join(class, e.Name(), "start"))
		size, err3 := readUint(filepath.Join(class, e.Name(), "size"))
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("partition %s (%s): read its number, start and size from sysfs", e.Name(), name)
		}
		// The parent directory of a partition in sysfs is its disk.
		link, err := filepath.EvalSymlinks(filepath.Join(class, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("partition %s: %w", e.Name(), err)
		}
		disk := filepath.Join(root, "/dev", filepath.Base(filepath.Dir(link)))
		p := &Partition{Number: uint32(num), Start: start, Size: size, Device: filepath.Join(root, "/dev", e.Name())}
		if p.GUID, err = partitionGUID(disk, p.Number); err != nil {
			return nil, fmt.Errorf("partition %s (%s): %w", p.Device, name, err)
		}
		return p, nil
	}
	return nil, fmt.Errorf("no partition named %q (looked through %s)", name, class)
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
