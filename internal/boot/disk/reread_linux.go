package disk

import (
	"os"

	"golang.org/x/sys/unix"
)

// rereadPartitions asks the kernel to re-read a block device's partition
// table (BLKRRPART), best effort.
func rereadPartitions(dev string) {
	f, err := os.Open(dev)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0) // EINVAL on a loop device without partscan: harmless
}
