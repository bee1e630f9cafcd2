package initrd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The hardware watchdog (vessel.watchdog=SECONDS, inside the signed UKI):
// the initrd opens the watchdog device right after loading the modules,
// sets the timeout and pings it from a goroutine every timeout/4; it keeps
// the device open across the exec of the host's init and hands it over in
// the environment; the host's PID 1 pings it for its whole life. A machine
// that freezes (the kernel, or vessel's PID 1 no longer scheduled) stops
// the pings and the device resets it: the next boot finds an update's
// trial try taken and boots the default slot (docs/update.md).
const (
	// WatchdogFlag is the kernel command line option.
	WatchdogFlag = "vessel.watchdog="
	// WatchdogFDEnv and WatchdogTimeoutEnv hand the open device (its file
	// descriptor number) and its timeout in seconds to the host's init.
	WatchdogFDEnv      = "VESSEL_WATCHDOG_FD"
	WatchdogTimeoutEnv = "VESSEL_WATCHDOG_TIMEOUT"
	// MaxWatchdogSeconds bounds vessel.watchdog= (drivers clamp further:
	// the i6300ESB takes at most 2046 s).
	MaxWatchdogSeconds = 3600
)

// WatchdogDevices are the device nodes tried, in order.
var WatchdogDevices = []string{"/dev/watchdog0", "/dev/watchdog"}

// ParseWatchdog reads vessel.watchdog=SECONDS from a kernel command line:
// ok is false without the option; a value that is not whole seconds in
// 1..MaxWatchdogSeconds is an error naming it (the last option wins, as
// for the kernel's own options).
func ParseWatchdog(cmdline string) (seconds int, ok bool, err error) {
	for _, f := range strings.Fields(cmdline) {
		v, found := strings.CutPrefix(f, WatchdogFlag)
		if !found {
			continue
		}
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > MaxWatchdogSeconds {
			seconds, ok, err = 0, false, fmt.Errorf("%s%s: want the timeout in whole seconds, 1 to %d", WatchdogFlag, v, MaxWatchdogSeconds)
			continue
		}
		seconds, ok, err = n, true, nil
	}
	return seconds, ok, err
}

// watchdogDevice is an open watchdog device (the linux one is in
// watchdog_linux.go; tests use a fake).
type watchdogDevice interface {
	// SetTimeout asks for a timeout (WDIOC_SETTIMEOUT).
	SetTimeout(seconds int) error
	// Timeout is the timeout the driver took (WDIOC_GETTIMEOUT).
	Timeout() (int, error)
	// Identity is the driver's name for the device (WDIOC_GETSUPPORT).
	Identity() (string, error)
	// Keepalive pings it (WDIOC_KEEPALIVE).
	Keepalive() error
	// Disarm stops it with the magic close ('V', then close): for a
	// device that could not be set up. Close is not called after it.
	Disarm() error
	// Fd is the file descriptor (kept open across exec).
	Fd() int
}

// errNoWatchdog: no watchdog device on this machine.
var errNoWatchdog = errors.New("no watchdog device")

// Watchdog is an armed watchdog and its pinger. A nil *Watchdog is a
// machine without one: every method is a no-op.
type Watchdog struct {
	Path     string // the device node (or "fd N" in the host)
	Identity string
	Timeout  int // seconds, as the driver took it
	dev      watchdogDevice
	every    time.Duration // ping period: Timeout/4

	mu     sync.Mutex
	stop   chan struct{}
	done   chan struct{}
	pings  int
	lastOK time.Time
	err    error // the first failed ping
}

// armWatchdog sets the timeout on an open device, reads back what the
// driver took and its identity, and pings it once. On failure the device
// is disarmed (magic close): the caller goes on without a watchdog.
func armWatchdog(dev watchdogDevice, path string, seconds int) (*Watchdog, error) {
	fail := func(err error) (*Watchdog, error) {
		if derr := dev.Disarm(); derr != nil {
			err = fmt.Errorf("%w (and disarming it: %v)", err, derr)
		}
		return nil, err
	}
	if err := dev.SetTimeout(seconds); err != nil {
		return fail(fmt.Errorf("%s: set the timeout to %d s: %w", path, seconds, err))
	}
	got, err := dev.Timeout()
	if err != nil {
		return fail(fmt.Errorf("%s: read the timeout back: %w", path, err))
	}
	if got < 1 {
		return fail(fmt.Errorf("%s: the driver reports a timeout of %d s", path, got))
	}
	id, err := dev.Identity()
	if err != nil {
		return fail(fmt.Errorf("%s: identity: %w", path, err))
	}
	if err := dev.Keepalive(); err != nil {
		return fail(fmt.Errorf("%s: ping: %w", path, err))
	}
	return newWatchdog(dev, path, id, got), nil
}

func newWatchdog(dev watchdogDevice, path, id string, timeout int) *Watchdog {
	return &Watchdog{Path: path, Identity: id, Timeout: timeout, dev: dev,
		every: time.Duration(timeout) * time.Second / 4, lastOK: time.Now()}
}

// Start pings the device every Timeout/4 from a goroutine until Stop.
func (w *Watchdog) Start() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop != nil {
		return
	}
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go w.run(w.stop, w.done)
}

func (w *Watchdog) run(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			w.Ping()
		}
	}
}

// Ping pings the device once (a failure is kept for Err).
func (w *Watchdog) Ping() {
	if w == nil {
		return
	}
	err := w.dev.Keepalive()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.err == nil {
			w.err = err
		}
		return
	}
	w.pings++
	w.lastOK = time.Now()
}

// Stop stops the pinger and waits for it; the device stays open and armed
// (it resets the machine one timeout after the last ping).
func (w *Watchdog) Stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	stop, done := w.stop, w.done
	w.stop, w.done = nil, nil
	w.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// Stats reports how many pings succeeded, when the last one did, and the
// first error.
func (w *Watchdog) Stats() (pings int, last time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pings, w.lastOK, w.err
}

// HandOver is what the host's init needs to keep pinging: the environment
// (descriptor number and timeout) and the descriptor to keep open across
// exec (0: none).
func (w *Watchdog) HandOver() (env []string, fd int) {
	if w == nil {
		return nil, 0
	}
	return []string{fmt.Sprintf("%s=%d", WatchdogFDEnv, w.dev.Fd()), fmt.Sprintf("%s=%d", WatchdogTimeoutEnv, w.Timeout)}, w.dev.Fd()
}

// String is the console's description: "/dev/watchdog0 (i6300ESB timer)".
func (w *Watchdog) String() string {
	if w.Identity == "" {
		return w.Path
	}
	return fmt.Sprintf("%s (%s)", w.Path, w.Identity)
}

// watchdogOpener is a system that has watchdog devices (linuxSystem).
type watchdogOpener interface {
	// openWatchdog opens the first of WatchdogDevices that exists;
	// errNoWatchdog when none does.
	openWatchdog() (watchdogDevice, string, error)
}

// armWatchdog arms the watchdog the command line asks for and starts its
// pinger. It never fails the boot: a bad value or a missing or refusing
// device is one console line, and the boot goes on without a watchdog.
func (s *Stage) armWatchdog(cmdline string) {
	seconds, ok, err := ParseWatchdog(cmdline)
	if err != nil {
		s.printf("watchdog: FAILED: %v: booting without a watchdog, a hang will not reset the machine", err)
		return
	}
	if !ok {
		return
	}
	o, isOpener := s.sys.(watchdogOpener)
	if !isOpener {
		s.printf("watchdog: %s%d: no watchdog device (%s): a hang will not reset the machine", WatchdogFlag, seconds, strings.Join(WatchdogDevices, ", "))
		return
	}
	dev, path, err := o.openWatchdog()
	if errors.Is(err, errNoWatchdog) {
		s.printf("watchdog: %s%d: no watchdog device (%s): a hang will not reset the machine", WatchdogFlag, seconds, strings.Join(WatchdogDevices, ", "))
		return
	}
	if err != nil {
		s.printf("watchdog: FAILED: %s%d: %v: booting without a watchdog, a hang will not reset the machine", WatchdogFlag, seconds, err)
		return
	}
	w, err := armWatchdog(dev, path, seconds)
	if err != nil {
		s.printf("watchdog: FAILED: %s%d: %v: booting without a watchdog, a hang will not reset the machine", WatchdogFlag, seconds, err)
		return
	}
	w.Start()
	s.wd = w
	s.printf("watchdog: %s armed, %d s (pinged every %v)", w, w.Timeout, w.every)
}

// hang is vessel.test=hang: the initrd stops pinging and blocks forever,
// without panicking or exiting (PID 1 exiting would panic the kernel): a
// real hang, which only the watchdog ends.
func (s *Stage) hang() {
	s.wd.Stop()
	if s.wd != nil {
		_, last, _ := s.wd.Stats()
		s.printf("test hook: hanging, the watchdog must reset the machine (last ping %dms ago, timeout %d s)", time.Since(last).Milliseconds(), s.wd.Timeout)
	} else {
		s.printf("test hook: hanging, the watchdog must reset the machine (no watchdog armed: nothing will)")
	}
	for {
		time.Sleep(time.Hour) // a timer pending: the runtime never calls it a deadlock
	}
}

// ParseWatchdogEnv reads the hand-over from the initrd (getenv is
// os.Getenv): ok is false when there is none; a malformed one is an error.
func ParseWatchdogEnv(getenv func(string) string) (fd, timeout int, ok bool, err error) {
	f, t := getenv(WatchdogFDEnv), getenv(WatchdogTimeoutEnv)
	if f == "" && t == "" {
		return 0, 0, false, nil
	}
	fd, ferr := strconv.Atoi(f)
	timeout, terr := strconv.Atoi(t)
	if ferr != nil || terr != nil || fd < 3 || timeout < 1 || timeout > MaxWatchdogSeconds {
		return 0, 0, false, fmt.Errorf("the initrd's watchdog hand-over %s=%q %s=%q: want a descriptor number above 2 and a timeout of 1 to %d seconds",
			WatchdogFDEnv, f, WatchdogTimeoutEnv, t, MaxWatchdogSeconds)
	}
	return fd, timeout, true, nil
}

// adoptWatchdog takes over the device the initrd handed over: it checks
// that the descriptor is a watchdog (the driver answers for its timeout),
// pings it and starts the pinger. PID 1 keeps it for its whole life.
func adoptWatchdog(dev watchdogDevice, timeout int) (*Watchdog, error) {
	got, err := dev.Timeout()
	if err != nil {
		return nil, fmt.Errorf("descriptor %d is not the watchdog (read its timeout: %w)", dev.Fd(), err)
	}
	if got != timeout {
		return nil, fmt.Errorf("descriptor %d: the watchdog's timeout is %d s, the initrd said %d s", dev.Fd(), got, timeout)
	}
	id, _ := dev.Identity() // a name for the console only
	if err := dev.Keepalive(); err != nil {
		return nil, fmt.Errorf("descriptor %d: ping: %w", dev.Fd(), err)
	}
	w := newWatchdog(dev, fmt.Sprintf("fd %d", dev.Fd()), id, got)
	w.Start()
	return w, nil
}
