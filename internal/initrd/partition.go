package initrd

import (
	"fmt"
	"time"

	"github.com/vesselos/vessel/internal/boot/efivar"
)

// DataPartition is the GPT partition name of vessel's data partition
// (internal/boot/disk writes it).
const DataPartition = "vessel-data"

// BlockClass is where the kernel lists block devices.
const BlockClass = efivar.BlockClass

// FindPartition looks through sysfs (no udev in the initrd) for the block
// device whose GPT partition name is name, and returns its /dev path.
// root prefixes the sysfs path (tests use a fixture).
func FindPartition(root, name string) (string, bool, error) {
	dev, ok, err := efivar.PartitionDevice(root, name)
	if !ok || err != nil {
		return "", ok, err
	}
	return "/dev/" + dev, true, nil
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
