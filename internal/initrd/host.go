package initrd

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/tpm"
)

// HostWrittenFile is written into the host root under vessel.test=root:
// a later boot must not find it (the root is new at every boot).
const HostWrittenFile = "/etc/vessel-host-written"

// HostMarker starts every line the host's init prints.
const HostMarker = "vessel-host:"

// IsHostInit reports whether this process is the host's init: PID 1
// executed as /sbin/init by the initrd's switch_root.
func IsHostInit() bool { return os.Getpid() == 1 && os.Args[0] == HostInit }

// HostMain is the host's init for this step of the verified boot: it
// prints what the initrd verified and mounted, and under vessel.test=root
// every device-mapper device with its live table. Then it starts the
// manifest's services (runServices) and stays PID 1 until SIGTERM or
// SIGINT; with vessel.test=root alone it powers off after the report.
// With the initrd's watchdog (vessel.watchdog=) it pings it every
// timeout/4 for its whole life.
func HostMain() {
	sys := linuxSystem{}
	printf := func(format string, args ...any) { fmt.Printf(HostMarker+" "+format+"\n", args...) }
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	// The initrd's watchdog (vessel.watchdog=): pinged until the reboot
	// system call, so a shutdown that hangs longer than the timeout is
	// reset too; no magic close (docs/update.md).
	wd := hostWatchdog(printf)
	defer func() {
		if r := recover(); r != nil {
			printf("FAILED: panic: %v", r)
		}
		unix.Sync()
		if cmd == unix.LINUX_REBOOT_CMD_RESTART {
			printf("rebooting")
		} else {
			printf("powering off")
		}
		if err := unix.Reboot(cmd); err != nil {
			printf("FAILED: %v", err)
		}
		wd.Stop() // a machine stuck here is reset by the watchdog, if armed
		for {
			time.Sleep(time.Hour)
		}
	}()
	if rec := hostBootRecord(); rec != nil && rec.Trial {
		cmd = unix.LINUX_REBOOT_CMD_RESTART // a failed trial boot goes back to the default slot
	}
	if err := RunHost(os.Stdout, "", sys.uptime, mount.DMTable); err != nil {
		printf("FAILED: %v", err)
		return
	}
	b, _ := os.ReadFile(CmdlineFile)
	flags := TestFlags(string(b))
	if slices.Contains(flags, "tpm") {
		if t, err := tpm.Open(TPMDevice); err != nil {
			printf("tpm: %v", err)
		} else {
			CheckHostTPM(printf, t, HostDataDir+"/tpm")
			t.Close()
		}
	}
	if slices.Contains(flags, "root") && !slices.Contains(flags, "services") {
		return // the report was the test
	}
	var window time.Duration
	if slices.Contains(flags, "services") {
		window = 20 * time.Second // a test boot ends by itself, cleanly
		if slices.Contains(flags, "update") {
			window = 120 * time.Second // room for a health check and staging
		}
	}
	c, err := runServices(printf, string(b), window)
	if err != nil {
		printf("FAILED: %v", err)
		shutdown(printf)
		return
	}
	cmd = c
}

// RunHost prints the host's report; root prefixes every path (tests).
func RunHost(w io.Writer, root string, uptime func() (float64, error), table func(string) ([]string, error)) error {
	rec, err := ReadBootRecord(root + BootRecordFile)
	if err != nil {
		return fmt.Errorf("what the initrd verified: %w", err)
	}
	up, err := uptime()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s up (manifest %s, version %d) host %s, %d layers, switch_root at %.3fs, uptime %.3fs\n",
		HostMarker, rec.Manifest, rec.Version, rec.Host, len(rec.Layers), rec.SwitchRoot, up)
	cmd, err := os.ReadFile(root + CmdlineFile)
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	if !slices.Contains(TestFlags(string(cmd)), "root") {
		return nil
	}
	if mounts, err := os.ReadFile(root + "/proc/mounts"); err == nil {
		for _, l := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(l); len(f) >= 4 && f[1] == "/" && f[2] == "overlay" {
				fmt.Fprintf(w, "%s root overlay flags %s\n", HostMarker, mountFlags(f[3]))
			}
		}
	}
	plans, _, err := (&mount.Manager{Run: root + RunDir}).Mounted()
	if err != nil {
		return fmt.Errorf("the mount records the initrd left: %w", err)
	}
	for _, p := range plans {
		fmt.Fprintf(w, "%s mount record %s: %s at %s\n", HostMarker, p.ID, p.Image, p.Target)
	}
	if err := reportPCR15(root, func(f string, a ...any) { fmt.Fprintf(w, HostMarker+" "+f+"\n", a...) }); err != nil {
		return err
	}
	names, _ := filepath.Glob(root + "/sys/block/dm-*/dm/name")
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return err
		}
		name := strings.TrimSpace(string(b))
		dev := filepath.Base(filepath.Dir(filepath.Dir(n)))
		tbl, err := table(name)
		if err != nil {
			return err
		}
		layer := ""
		for _, l := range rec.Layers {
			if l.Verity == name {
				layer = " layer " + l.Digest
			}
		}
		fmt.Fprintf(w, "%s dm %s %s%s table %s\n", HostMarker, dev, name, layer, strings.Join(tbl, "; "))
	}
	// The root is the overlay with a fresh upper: writable, and new at
	// every boot. What an earlier boot wrote must be gone (the reboot test
	// reads this line on the second boot).
	earlier := "none"
	if b, err := os.ReadFile(root + HostWrittenFile); err == nil {
		earlier = fmt.Sprintf("%q", b)
	}
	if err := os.WriteFile(root+HostWrittenFile, []byte(fmt.Sprintf("written at uptime %.3fs\n", up)), 0o644); err != nil {
		return fmt.Errorf("the host root is not writable: %w", err)
	}
	fmt.Fprintf(w, "%s root writable (wrote %s; left from an earlier boot: %s)\n", HostMarker, HostWrittenFile, earlier)
	return nil
}

// mountFlags keeps the flags of a /proc/mounts option list (the ones
// without '='), leaving out overlayfs' long lowerdir/upperdir options.
func mountFlags(opts string) string {
	var out []string
	for _, o := range strings.Split(opts, ",") {
		if !strings.Contains(o, "=") {
			out = append(out, o)
		}
	}
	return strings.Join(out, ",")
}
