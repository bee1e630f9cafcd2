package initrd

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseWatchdog(t *testing.T) {
	for cmdline, want := range map[string]int{
		"console=ttyS0 vessel.watchdog=20":                  20,
		"vessel.watchdog=1 quiet":                           1,
		"vessel.watchdog=3600":                              3600,
		"vessel.watchdog=abc vessel.watchdog=30":            30, // the last one wins
		"console=ttyS0 vessel.test=root vessel.watchdogs=5": 0,
		"": 0,
	} {
		got, ok, err := ParseWatchdog(cmdline)
		if err != nil || ok != (want != 0) || got != want {
			t.Errorf("ParseWatchdog(%q) = %d, %v, %v; want %d", cmdline, got, ok, err, want)
		}
	}
	for _, bad := range []string{"0", "-5", "3601", "20s", "abc", ""} {
		_, ok, err := ParseWatchdog("console=ttyS0 vessel.watchdog=" + bad)
		if err == nil || ok {
			t.Errorf("vessel.watchdog=%s accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), "vessel.watchdog="+bad+":") {
			t.Errorf("the error does not name the value: %v", err)
		}
	}
}

func TestParseWatchdogEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	fd, to, ok, err := ParseWatchdogEnv(env(map[string]string{WatchdogFDEnv: "3", WatchdogTimeoutEnv: "20"}))
	if err != nil || !ok || fd != 3 || to != 20 {
		t.Fatalf("got %d %d %v %v", fd, to, ok, err)
	}
	if _, _, ok, err := ParseWatchdogEnv(env(nil)); ok || err != nil {
		t.Fatalf("no hand-over: %v %v", ok, err)
	}
	for _, m := range []map[string]string{
		{WatchdogFDEnv: "3"}, {WatchdogTimeoutEnv: "20"}, {WatchdogFDEnv: "1", WatchdogTimeoutEnv: "20"},
		{WatchdogFDEnv: "x", WatchdogTimeoutEnv: "20"}, {WatchdogFDEnv: "4", WatchdogTimeoutEnv: "0"},
	} {
		if _, _, ok, err := ParseWatchdogEnv(env(m)); ok || err == nil || !strings.Contains(err.Error(), WatchdogFDEnv) {
			t.Errorf("%v: ok %v, err %v", m, ok, err)
		}
	}
}

// fakeWatchdog is a driver that clamps the timeout to max and counts pings.
type fakeWatchdog struct {
	mu               sync.Mutex
	max, timeout     int
	pings            int
	failSet, failGet error
	disarmed         bool
}

func (f *fakeWatchdog) SetTimeout(s int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failSet != nil {
		return f.failSet
	}
	f.timeout = min(s, f.max)
	return nil
}
func (f *fakeWatchdog) Timeout() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeout, f.failGet
}
func (f *fakeWatchdog) Identity() (string, error) { return "i6300ESB timer", nil }
func (f *fakeWatchdog) Keepalive() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pings++
	return nil
}
func (f *fakeWatchdog) Disarm() error { f.disarmed = true; return nil }
func (f *fakeWatchdog) Fd() int       { return 7 }
func (f *fakeWatchdog) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pings
}

func TestArmWatchdog(t *testing.T) {
	dev := &fakeWatchdog{max: 2046}
	w, err := armWatchdog(dev, "/dev/watchdog0", 3000)
	if err != nil {
		t.Fatal(err)
	}
	// what the driver took, not what was asked
	if w.Timeout != 2046 || w.Identity != "i6300ESB timer" || w.String() != "/dev/watchdog0 (i6300ESB timer)" || dev.pings != 1 || dev.disarmed {
		t.Fatalf("armed %+v, %d pings, disarmed %v", w, dev.pings, dev.disarmed)
	}
	if w.every != 2046*time.Second/4 {
		t.Fatalf("ping period %v", w.every)
	}
	env, fd := w.HandOver()
	if fd != 7 || strings.Join(env, " ") != "VESSEL_WATCHDOG_FD=7 VESSEL_WATCHDOG_TIMEOUT=2046" {
		t.Fatalf("hand-over %v %d", env, fd)
	}
	// a device that refuses is disarmed, and the error says what failed
	for name, dev := range map[string]*fakeWatchdog{
		"set the timeout to 20 s": {max: 60, failSet: unix.EINVAL},
		"read the timeout back":   {max: 60, failGet: unix.ENOTTY},
		"timeout of 0 s":          {max: 0},
	} {
		w, err := armWatchdog(dev, "/dev/watchdog0", 20)
		if err == nil || w != nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "/dev/watchdog0") || !dev.disarmed {
			t.Errorf("%s: %v %v, disarmed %v", name, w, err, dev.disarmed)
		}
	}
	var nilW *Watchdog // no watchdog: every method a no-op
	nilW.Start()
	nilW.Ping()
	nilW.Stop()
	if env, fd := nilW.HandOver(); env != nil || fd != 0 {
		t.Fatal("a nil watchdog hands something over")
	}
}

// waitFor polls cond (bounded): the pinger's period is short in these tests.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("%s: not after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWatchdogPinger(t *testing.T) {
	dev := &fakeWatchdog{max: 60}
	w, err := armWatchdog(dev, "/dev/watchdog", 20)
	if err != nil {
		t.Fatal(err)
	}
	w.every = time.Millisecond
	w.Start()
	w.Start() // idempotent: one pinger
	waitFor(t, "5 pings", func() bool { return dev.count() >= 5 })
	w.Stop()
	n := dev.count()
	time.Sleep(20 * time.Millisecond)
	if dev.count() != n {
		t.Fatalf("pinged after Stop: %d then %d", n, dev.count())
	}
	if pings, _, err := w.Stats(); pings != n-1 || err != nil { // the first ping was armWatchdog's
		t.Fatalf("stats %d pings, %v; device saw %d", pings, err, n)
	}
}

// watchdogSystem is the fake system with a watchdog device (or none).
type watchdogSystem struct {
	fakeSystem
	dev     *fakeWatchdog
	openErr error
}

func (w *watchdogSystem) openWatchdog() (watchdogDevice, string, error) {
	if w.openErr != nil {
		return nil, "", w.openErr
	}
	return w.dev, "/dev/watchdog0", nil
}

// syncBuffer is a console written from two goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStageArmsWatchdog(t *testing.T) {
	for _, c := range []struct {
		name, cmdline string
		sys           system
		want          string
		armed         bool
	}{
		{"armed", "console=ttyS0 vessel.watchdog=20", &watchdogSystem{dev: &fakeWatchdog{max: 2046}},
			"vessel-init: watchdog: /dev/watchdog0 (i6300ESB timer) armed, 20 s (pinged every 5s)\n", true},
		{"no device", "vessel.watchdog=20", &watchdogSystem{openErr: errNoWatchdog},
			"vessel-init: watchdog: vessel.watchdog=20: no watchdog device (/dev/watchdog0, /dev/watchdog): a hang will not reset the machine\n", false},
		{"no device support", "vessel.watchdog=20", &fakeSystem{},
			"vessel-init: watchdog: vessel.watchdog=20: no watchdog device (/dev/watchdog0, /dev/watchdog): a hang will not reset the machine\n", false},
		{"open fails", "vessel.watchdog=20", &watchdogSystem{openErr: errors.New("open /dev/watchdog0: device or resource busy")},
			"vessel-init: watchdog: FAILED: vessel.watchdog=20: open /dev/watchdog0: device or resource busy: booting without a watchdog, a hang will not reset the machine\n", false},
		{"refused", "vessel.watchdog=20", &watchdogSystem{dev: &fakeWatchdog{max: 60, failSet: unix.EINVAL}},
			"vessel-init: watchdog: FAILED: vessel.watchdog=20: /dev/watchdog0: set the timeout to 20 s: invalid argument: booting without a watchdog, a hang will not reset the machine\n", false},
		{"bad value", "vessel.watchdog=20s", &watchdogSystem{dev: &fakeWatchdog{max: 60}},
			"vessel-init: watchdog: FAILED: vessel.watchdog=20s: want the timeout in whole seconds, 1 to 3600: booting without a watchdog, a hang will not reset the machine\n", false},
		{"not asked", "console=ttyS0", &watchdogSystem{dev: &fakeWatchdog{max: 60}}, "", false},
	} {
		var out syncBuffer
		s := &Stage{Console: &out, sys: c.sys}
		s.armWatchdog(c.cmdline)
		if out.String() != c.want {
			t.Errorf("%s: console %q, want %q", c.name, out.String(), c.want)
		}
		if (s.wd != nil) != c.armed {
			t.Errorf("%s: armed %v", c.name, s.wd != nil)
		}
		if ws, ok := c.sys.(*watchdogSystem); ok && ws.dev != nil && !c.armed && ws.dev.count() != 0 {
			t.Errorf("%s: pinged without being armed", c.name)
		}
		s.wd.Stop()
	}
}

// TestRunHangs: vessel.test=hang after the watchdog is armed prints the
// hook's line, stops pinging, and never returns (nor panics).
func TestRunHangs(t *testing.T) {
	dev := &fakeWatchdog{max: 60}
	sys := &watchdogSystem{dev: dev}
	var out syncBuffer
	s := &Stage{Console: &out, Version: "v1", Root: root(t, "console=ttyS0 vessel.watchdog=20 vessel.test=hang", nil, nil), sys: sys}
	returned := make(chan error, 1)
	go func() { returned <- s.Run() }()
	waitFor(t, "the hang line", func() bool { return strings.Contains(out.String(), "test hook: hanging") })
	if !strings.Contains(out.String(), "vessel-init: watchdog: /dev/watchdog0 (i6300ESB timer) armed, 20 s") {
		t.Fatalf("not armed before the hang:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "vessel-init: test hook: hanging, the watchdog must reset the machine (last ping ") {
		t.Fatalf("console:\n%s", out.String())
	}
	n := dev.count()
	select {
	case err := <-returned:
		t.Fatalf("Run returned from the hang: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if dev.count() != n || sys.off {
		t.Fatalf("pinged (%d then %d) or powered off (%v) during the hang", n, dev.count(), sys.off)
	}
	// the goroutine stays blocked in the hang until the test binary exits
}

// TestFdWatchdogNotADevice runs the real ioctls on a regular file: the
// driver calls fail (ENOTTY), the errors name what failed, and the device
// is disarmed with the magic close ('V' written, descriptor closed).
func TestFdWatchdogNotADevice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "watchdog")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := openWatchdogPath(p)
	if err != nil {
		t.Fatal(err)
	}
	if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("opened without close-on-exec: %#x %v", flags, err)
	}
	if _, err := adoptWatchdog(fd, 20); err == nil || !strings.Contains(err.Error(), "is not the watchdog") {
		t.Fatalf("adopt a regular file: %v", err)
	}
	if err := keepAcrossExec(int(fd)); !errors.Is(err, unix.ENOTTY) {
		t.Fatalf("keepAcrossExec: %v", err)
	}
	if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC != 0 {
		t.Fatalf("close-on-exec still set: %#x %v", flags, err)
	}
	w, err := armWatchdog(fd, p, 20)
	if w != nil || !errors.Is(err, unix.ENOTTY) || !strings.Contains(err.Error(), p+": set the timeout to 20 s") {
		t.Fatalf("armed a regular file: %v %v", w, err)
	}
	if b, _ := os.ReadFile(p); string(b) != "V" {
		t.Fatalf("no magic close: the file holds %q", b)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("descriptor still open after the magic close: %v", err)
	}
}
