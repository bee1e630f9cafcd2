package mount

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// mountFuse mounts a layer blob, already verified in userspace through the
// open file blob (which the driver is handed, so that it reads the very file
// that was verified, not whatever the path names by now), with its
// FUSE driver (ModeFuse: rootless, in a user namespace, where the kernel
// refuses squashfs and erofs). The blob is the filesystem image followed
// by its verity tree; squashfuse reads the image from offset 0 and never
// looks past its end. Unmounting (umount2, which the namespace's root may
// do) ends the driver.
//
// Overlay asks the lower layers for user.overlay.* xattrs in this mode
// (-o userxattr); squashfuse answers an overlay.opaque query under any
// prefix, so opaque directories of images built as root (which carry
// trusted.overlay.opaque) are honoured rootless too.
func mountFuse(lm LayerMount, blob *os.File) error {
	driver := strings.TrimPrefix(lm.Mount.Type, "fuse.")
	if _, err := exec.LookPath(driver); err != nil {
		if driver == "erofsfuse" {
			return fmt.Errorf("this layer is erofs, and mounting erofs rootless needs erofsfuse, which is not installed (Debian 12 does not package it): build the image with squashfs layers, or run as root")
		}
		return fmt.Errorf("mounting layers rootless needs %s: install it (apt-get install %s)", driver, driver)
	}
	// In the foreground, as a child of this process, in a session of its
	// own (a terminal's ^C must not reach it): this process reaps it when
	// an unmount ends it, so a long-running vessel (a build, a
	// supervisor) that is pid 1 of its namespace collects no zombies.
	// Its output goes to an unlinked file, not a pipe: the driver
	// outlives a `vessel mount` that exits, and a write to a pipe nobody
	// reads would kill it (SIGPIPE) and with it the mount.
	out, err := os.CreateTemp("", "vessel-"+driver+"-*.log")
	if err != nil {
		return err
	}
	os.Remove(out.Name())
	defer out.Close()
	output := func() []byte {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", out.Fd()))
		return bytes.TrimSpace(b)
	}
	opts := strings.Join(layerOptions, ",")
	if !strings.ContainsAny(lm.Blob, ",\\") {
		opts += ",fsname=" + lm.Blob // what the mount table shows
	}
	cmd := exec.Command(driver, "-f", "-o", opts, "/dev/fd/3", lm.Dir)
	cmd.ExtraFiles = []*os.File{blob}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s %s: %w", driver, lm.Blob, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(fuseTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		select {
		case err := <-exited:
			msg := output()
			if bytes.Contains(msg, []byte("/dev/fuse")) {
				return fmt.Errorf("%s %s: %s (is /dev/fuse there and usable? the fuse module must be loaded)", driver, lm.Blob, msg)
			}
			return fmt.Errorf("%s %s: %v: %s", driver, lm.Blob, err, msg)
		case <-time.After(delay):
		}
		if isMountPoint(lm.Dir) {
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("%s %s: no mount at %s after %v", driver, lm.Blob, lm.Dir, fuseTimeout)
		}
	}
}

// fuseTimeout bounds how long a FUSE driver may take to mount a layer.
const fuseTimeout = 10 * time.Second
