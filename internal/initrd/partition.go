package initrd

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DataPartition is the GPT partition name of vessel's data partition
// (internal/boot/disk writes it).
const DataPartition = "vessel-data"

// BlockClass is where the kernel lists block devices.
const BlockClass = "/sys/class/block"

// FindPartition looks through sysfs (no udev in the initrd) for the block
// device whose GPT partition name is name, and returns its /dev path.
// root prefixes the sysfs path (tests use a fixture).
func FindPartition(root, name string) (string, bool, error) {
	ents, err := os.ReadDir(root + BlockClass)
	if err != nil {
		return "", false, fmt.Errorf("list block devices: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(root+BlockClass, n, "uevent"))
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
			return "/dev/" + dev, true, nil
		}
	}
	return "", false, nil
}

// checkDisk waits (bounded) for the data partition to appear and prints it:
//
//	vessel-init: data partition /dev/vda2 (vessel-data) after 120ms
func (s *Stage) checkDisk(wait time.Duration) error {
	start := time.Now()
	for {
		dev, ok, err := FindPartition(s.Root, DataPartition)
		if err != nil {
			return err
		}
		if ok {
			s.printf("data partition %s (%s) after %dms", dev, DataPartition, time.Since(start).Milliseconds())
			return nil
		}
		if time.Since(start) > wait {
			return fmt.Errorf("no partition named %s appeared in %v (is the disk attached and its virtio/storage module loaded?)", DataPartition, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
