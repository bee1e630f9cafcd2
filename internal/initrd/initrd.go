// Package initrd is vessel's PID-1 stage: what vessel does when the kernel
// runs it as /init from the initrd built by internal/boot/initrd.
//
// It is a short list of steps, each a function of a Stage: mount the early
// filesystems (a Mount plan as data, applied in mount_linux.go), load the
// kernel modules in the order the initrd lists them (finit_module), print a
// marker line with timings, run the checks the command line asks for
// (vessel.test=pcr7, vessel.test=disk), then power off. With
// vessel.watchdog=SECONDS it arms the hardware watchdog after the modules
// (watchdog.go) and hands it to the host's init. It never starts a shell: on any
// failure it prints one line naming what failed and powers off. The next
// stage (mounting the verified root, issue 14) adds steps here.
package initrd

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// Marker starts every line the stage prints; tests and the VM harness
// look for it on the serial console.
const Marker = "vessel-init:"

// Paths the stage reads inside the initrd (written by internal/boot/initrd).
const (
	ProductIDFile = "/etc/vessel/product-id"
	ModulesFile   = "/etc/vessel/modules"
	CmdlineFile   = "/proc/cmdline"
)

// Stage is the PID-1 stage's state.
type Stage struct {
	Console io.Writer
	Version string
	Root    string // prefix for every path read ("" on a real boot; a fixture dir in tests)
	sys     system
	trial   bool      // booting an update's trial slot: a failure reboots (slots.go)
	wd      *Watchdog // the armed hardware watchdog (vessel.watchdog=), or nil
}

// system is what a step needs from the kernel; the real one is in
// system_linux.go.
type system interface {
	mount(m Mount) error
	loadModule(path string) (loaded bool, err error)
	powerOff() error
	uptime() (float64, error) // seconds since the kernel started
}

// IsInit reports whether this process is the initrd's /init: PID 1 started
// as /init (the kernel passes the path it ran as argv[0]). Nothing else
// matches: vessel as PID 1 of a PID namespace (rootless re-exec) or as a
// host's /sbin/init keeps its CLI.
func IsInit() bool { return os.Getpid() == 1 && os.Args[0] == "/init" }

// Main runs the stage as PID 1 and powers the machine off at the end, on
// success or failure. It returns only if power-off itself fails (then the
// caller must not exit: PID 1 exiting panics the kernel).
func Main() {
	s := &Stage{Console: os.Stdout, Version: Version(), sys: linuxSystem{}}
	defer func() {
		if r := recover(); r != nil {
			s.printf("FAILED: panic: %v", r)
		}
		if s.trial {
			s.failTrial() // reboots into the default slot; returns if it cannot
		}
		s.printf("powering off")
		if err := s.sys.powerOff(); err != nil {
			s.printf("FAILED: power off: %v", err)
		}
		s.wd.Stop() // a machine stuck here is reset by the watchdog, if armed
		for {
			time.Sleep(time.Hour)
		}
	}()
	if err := s.Run(); err != nil {
		s.printf("FAILED: %v", err)
	}
}

// Version is the vessel version this binary was built as.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}

func (s *Stage) printf(format string, args ...any) {
	fmt.Fprintf(s.Console, Marker+" "+format+"\n", args...)
}

func (s *Stage) path(p string) string { return s.Root + p }

// Run runs every step in order and stops at the first failure.
func (s *Stage) Run() error {
	// The marker comes first: it needs only the initrd's own files and the
	// boot clock (CLOCK_BOOTTIME, what /proc/uptime shows).
	pid, err := os.ReadFile(s.path(ProductIDFile))
	if err != nil {
		return fmt.Errorf("read product ID: %w", err)
	}
	up, err := s.sys.uptime()
	if err != nil {
		return fmt.Errorf("read the boot clock: %w", err)
	}
	s.printf("started (vessel %s, product %s) uptime %.3fs", s.Version, strings.TrimSpace(string(pid)), up)
	started := up
	for _, m := range EarlyMounts {
		if err := s.sys.mount(m); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
		}
	}
	t0 := time.Now()
	n, err := s.loadModules()
	if err != nil {
		return err
	}
	if up, err = s.sys.uptime(); err != nil {
		return fmt.Errorf("read the boot clock: %w", err)
	}
	s.printf("modules: %d loaded in %dms, uptime %.3fs", n, time.Since(t0).Milliseconds(), up)
	cmd, err := os.ReadFile(s.path(CmdlineFile))
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	// The watchdog is armed as early as its module is loaded, so that
	// everything after it is covered: a hang resets the machine.
	s.armWatchdog(string(cmd))
	flags := TestFlags(string(cmd))
	if slices.Contains(flags, "hang") {
		s.hang() // never returns
	}
	for _, t := range flags {
		switch t {
		case "root", "services", "tpm", "update":
			// the verified boot below, with checks in the host
		case "pcr7":
			if err := s.checkPCR7(); err != nil {
				return err
			}
		case "disk":
			if err := s.checkDisk(10 * time.Second); err != nil {
				return err
			}
		default:
			s.printf("unknown vessel.test=%s ignored", t)
		}
	}
	if len(flags) > 0 && !slices.Contains(flags, "root") {
		// A check-only boot: the command line (inside the signed UKI)
		// asked for checks, not for the host; nothing else runs.
		s.printf("done: check-only boot (vessel.test=%s)", strings.Join(flags, ","))
		return nil
	}
	return s.bootRoot(started)
}

// TestFlags returns the values of every vessel.test= option on a kernel
// command line (comma-separated values are split).
func TestFlags(cmdline string) []string {
	var out []string
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "vessel.test="); ok {
			for _, t := range strings.Split(v, ",") {
				if t != "" {
					out = append(out, t)
				}
			}
		}
	}
	return out
}
