// Package vmtest boots a Secure Boot virtual machine for tests and
// benchmarks: qemu (TCG, q35 with SMM) with OVMF's Secure Boot firmware and
// a variable store, swtpm as the vTPM, an EFI system partition (a directory
// qemu presents as FAT) or a whole disk image, and the serial console in a
// file that is followed line by line with the host time each line
// appeared.
//
// Every process it starts runs under a deadline and is killed by its PID
// on every path (Kill, the deadline, or t.Cleanup with StartT). A boot the
// firmware refuses ("Access Denied") leaves OVMF waiting forever: Wait
// returns as soon as that text appears, and the caller kills the VM.
//
// The network is off (-nic none) unless Config.Net gives forwards; then it
// is qemu user networking with restrict=on, whose only way in or out are
// the given hostfwd/guestfwd rules (which must name 127.0.0.1).
package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Firmware and tool locations on Debian 12 (packages ovmf, qemu-system-x86, swtpm).
const (
	OVMFCode     = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	OVMFVars     = "/usr/share/OVMF/OVMF_VARS_4M.fd"          // empty store: setup mode
	SnakeoilVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd" // enforces Debian's snakeoil keys
	Qemu         = "qemu-system-x86_64"
	Swtpm        = "swtpm"
)

// AccessDenied is what OVMF prints when Secure Boot refuses an image.
const AccessDenied = "Access Denied"

// ErrDenied is returned by Wait when the firmware refused the image.
var ErrDenied = errors.New("the firmware refused the image (Access Denied)")

// Config describes one VM.
type Config struct {
	Code string // firmware code; default OVMFCode
	Vars string // variable store template, copied for this VM; default SnakeoilVars
	// NVRAM keeps the variable store in this file across VMs (a machine's
	// own NVRAM: boot entries, BootOrder, BootNext); made from Vars when
	// it does not exist yet. Default: a fresh copy for every VM.
	NVRAM  string
	ESPDir string // a directory served as a FAT drive (EFI/BOOT/BOOTX64.EFI inside)
	Disk   string // a raw disk image (used read-write in place); ESPDir or Disk
	TPM    bool   // attach a swtpm vTPM (TIS)
	// TPMState keeps the vTPM's state in this directory across VMs (a
	// reboot with the same TPM); default a temp dir removed at Kill.
	TPMState string
	MemoryMB int           // default 512
	Timeout  time.Duration // the VM is killed after this; default 5 minutes
	Net      []string      // hostfwd=/guestfwd= rules; none: -nic none (unless TFTPDir)
	Dir      string        // where the serial log and VARS copy go; default a new temp dir
	Monitor  bool          // qemu's HMP monitor on a unix socket, for VM.Monitor
	// Watchdog attaches an i6300ESB watchdog whose expiry resets the
	// machine (-action watchdog=reset); under -no-reboot the reset ends
	// qemu, which the tests treat as a reboot (a power cycle). The guest
	// arms it with vessel.watchdog=SECONDS.
	Watchdog bool

	// TFTPDir, with BootFile, serves that directory with qemu's built-in
	// TFTP server and hands BootFile out by DHCP: the firmware boots it
	// over the network (PXE). With neither ESPDir nor Disk, no disk is
	// attached at all.
	TFTPDir, BootFile string
}

// Line is one line of serial output and when the host saw it, counted from
// the start of qemu.
type Line struct {
	At   time.Duration
	Text string
}

// VM is a running (or finished) virtual machine.
type VM struct {
	Dir     string
	Serial  string    // path of the serial log
	Started time.Time // when qemu was started

	qemu, swtpm *exec.Cmd
	qemuDone    chan struct{}
	qemuErr     error
	tpmDir      string
	monDir      string // holds the monitor socket (Config.Monitor)
	killOnce    sync.Once
	deadline    *time.Timer

	mu      sync.Mutex
	lines   []Line
	partial []byte
	offset  int64
}

// Missing returns what this machine lacks to boot VMs ("" if nothing):
// tests skip with it.
func Missing(cfg Config) string {
	var miss []string
	for _, bin := range []string{Qemu, Swtpm} {
		if _, err := exec.LookPath(bin); err != nil {
			miss = append(miss, bin)
		}
	}
	for _, f := range []string{or(cfg.Code, OVMFCode), or(cfg.Vars, SnakeoilVars)} {
		if _, err := os.Stat(f); err != nil {
			miss = append(miss, f)
		}
	}
	if len(miss) == 0 {
		return ""
	}
	return "missing " + strings.Join(miss, ", ") + " (make deps installs qemu-system-x86, ovmf, swtpm)"
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Args returns qemu's arguments for the config (without the binary).
func (c Config) Args(vars, serial, tpmSock string) ([]string, error) {
	if c.ESPDir != "" && c.Disk != "" || c.ESPDir == "" && c.Disk == "" && c.TFTPDir == "" {
		return nil, errors.New("vmtest: give one of ESPDir and Disk, or TFTPDir for a diskless PXE boot")
	}
	if (c.TFTPDir == "") != (c.BootFile == "") {
		return nil, errors.New("vmtest: TFTPDir and BootFile go together")
	}
	mem := c.MemoryMB
	if mem == 0 {
		mem = 512
	}
	a := []string{
		"-accel", "tcg", "-machine", "q35,smm=on", "-m", fmt.Sprint(mem),
		"-global", "driver=cfi.pflash01,property=secure,value=on",
		"-global", "ICH9-LPC.disable_s3=1",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + or(c.Code, OVMFCode),
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
		"-serial", "file:" + serial, "-display", "none", "-monitor", "none", "-no-reboot",
	}
	if c.ESPDir != "" {
		a = append(a, "-drive", "file=fat:rw:"+c.ESPDir+",format=raw,if=virtio")
	} else if c.Disk != "" {
		a = append(a, "-drive", "file="+c.Disk+",format=raw,if=virtio")
	}
	if c.Watchdog {
		a = append(a, "-device", "i6300esb", "-action", "watchdog=reset")
	}
	if tpmSock != "" {
		a = append(a, "-chardev", "socket,id=chrtpm,path="+tpmSock, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	if len(c.Net) == 0 && c.TFTPDir == "" {
		a = append(a, "-nic", "none")
	} else {
		for _, r := range c.Net {
			if !strings.HasPrefix(r, "hostfwd=") && !strings.HasPrefix(r, "guestfwd=") {
				return nil, fmt.Errorf("vmtest: network rule %q: only hostfwd= and guestfwd= are allowed", r)
			}
			if !strings.Contains(r, "127.0.0.1") {
				return nil, fmt.Errorf("vmtest: network rule %q must name 127.0.0.1 (the guest reaches only the host's loopback)", r)
			}
		}
		opts := append([]string{"user", "id=n0", "restrict=on"}, c.Net...)
		if c.TFTPDir != "" {
			if strings.ContainsAny(c.TFTPDir+c.BootFile, ",") {
				return nil, fmt.Errorf("vmtest: TFTP directory %q or boot file %q contains a comma", c.TFTPDir, c.BootFile)
			}
			opts = append(opts, "tftp="+c.TFTPDir, "bootfile="+c.BootFile)
		}
		// romfile= (none): OVMF's own virtio-net driver and PXE, not
		// qemu's iPXE option ROM (unsigned for our db under Secure Boot).
		a = append(a, "-netdev", strings.Join(opts, ","), "-device", "virtio-net-pci,netdev=n0,romfile=")
	}
	return a, nil
}

// Start starts swtpm (if asked) and qemu. The caller must Kill the VM.
func Start(cfg Config) (vm *VM, err error) {
	if m := Missing(cfg); m != "" {
		return nil, errors.New("vmtest: " + m)
	}
	dir := cfg.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "vessel-vm-"); err != nil {
			return nil, err
		}
	}
	vm = &VM{Dir: dir, Serial: filepath.Join(dir, "serial.log"), qemuDone: make(chan struct{})}
	defer func() {
		if err != nil {
			vm.Kill()
		}
	}()
	vars := filepath.Join(dir, "vars.fd")
	if cfg.NVRAM != "" {
		vars = cfg.NVRAM
	}
	if _, err := os.Stat(vars); cfg.NVRAM == "" || os.IsNotExist(err) {
		if err := copyFile(or(cfg.Vars, SnakeoilVars), vars); err != nil {
			return vm, fmt.Errorf("vmtest: copy variable store: %w", err)
		}
	}
	if err := os.WriteFile(vm.Serial, nil, 0o644); err != nil {
		return vm, err
	}
	sock := ""
	if cfg.TPM {
		// A short path: unix socket names are limited to 108 bytes.
		if vm.tpmDir, err = os.MkdirTemp("", "vtpm-"); err != nil {
			return vm, err
		}
		sock = filepath.Join(vm.tpmDir, "s")
		state := vm.tpmDir
		if cfg.TPMState != "" {
			state = cfg.TPMState
		}
		vm.swtpm = exec.Command(Swtpm, "socket", "--tpm2", "--tpmstate", "dir="+state, "--ctrl", "type=unixio,path="+sock)
		vm.swtpm.Stdout, vm.swtpm.Stderr = io.Discard, io.Discard
		if err := vm.swtpm.Start(); err != nil {
			return vm, fmt.Errorf("vmtest: start swtpm: %w", err)
		}
		if err := waitFor(sock, 10*time.Second); err != nil {
			return vm, fmt.Errorf("vmtest: swtpm socket: %w", err)
		}
	}
	args, err := cfg.Args(vars, vm.Serial, sock)
	if err != nil {
		return vm, err
	}
	if cfg.Monitor {
		// A short path, as for swtpm's socket.
		if vm.monDir, err = os.MkdirTemp("", "vmon-"); err != nil {
			return vm, err
		}
		for i := range args {
			if args[i] == "-monitor" {
				args[i+1] = "unix:" + filepath.Join(vm.monDir, "s") + ",server=on,wait=off"
			}
		}
	}
	var stderr bytes.Buffer
	vm.qemu = exec.Command(Qemu, args...)
	vm.qemu.Stdout, vm.qemu.Stderr = &stderr, &stderr
	vm.Started = time.Now()
	if err := vm.qemu.Start(); err != nil {
		return vm, fmt.Errorf("vmtest: start qemu: %w", err)
	}
	go func() {
		err := vm.qemu.Wait()
		if err != nil && stderr.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		vm.qemuErr = err
		close(vm.qemuDone)
	}()
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	vm.deadline = time.AfterFunc(timeout, func() { vm.Kill() })
	return vm, nil
}

// StartT starts a VM for a test: it skips the test if qemu, swtpm or the
// firmware are missing, and kills the VM when the test ends.
func StartT(t testing.TB, cfg Config) *VM {
	t.Helper()
	if m := Missing(cfg); m != "" {
		t.Skip(m)
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	vm, err := Start(cfg)
	if vm != nil {
		t.Cleanup(func() {
			vm.Kill()
			if t.Failed() {
				t.Logf("serial log of the VM (%s):\n%s", vm.Serial, vm.Tail(60))
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func waitFor(path string, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s did not appear in %v", path, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// Kill kills qemu and swtpm by PID and waits for them; idempotent. The
// serial lines read so far stay available.
func (vm *VM) Kill() {
	vm.killOnce.Do(func() {
		if vm.deadline != nil {
			vm.deadline.Stop()
		}
		if vm.qemu != nil && vm.qemu.Process != nil {
			_ = vm.qemu.Process.Kill() // an exited qemu: ESRCH-like "process already finished"
			<-vm.qemuDone
		}
		if vm.swtpm != nil && vm.swtpm.Process != nil {
			_ = vm.swtpm.Process.Signal(syscall.SIGKILL)
			_ = vm.swtpm.Wait() // killed: the error only says so
		}
		if vm.tpmDir != "" {
			os.RemoveAll(vm.tpmDir)
		}
		if vm.monDir != "" {
			os.RemoveAll(vm.monDir)
		}
		vm.poll()
	})
}

// Exited reports whether qemu has exited, and how.
func (vm *VM) Exited() (bool, error) {
	select {
	case <-vm.qemuDone:
		return true, vm.qemuErr
	default:
		return false, nil
	}
}

// poll reads new serial output and records complete lines.
func (vm *VM) poll() {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	f, err := os.Open(vm.Serial)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	now := time.Since(vm.Started)
	for {
		n, err := f.ReadAt(buf, vm.offset)
		vm.offset += int64(n)
		vm.partial = append(vm.partial, buf[:n]...)
		if err != nil || n == 0 {
			break
		}
	}
	for {
		i := bytes.IndexByte(vm.partial, '\n')
		if i < 0 {
			break
		}
		vm.lines = append(vm.lines, Line{At: now, Text: strings.TrimRight(string(vm.partial[:i]), "\r")})
		vm.partial = vm.partial[i+1:]
	}
}

// Lines returns the complete serial lines so far.
func (vm *VM) Lines() []Line {
	vm.poll()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]Line(nil), vm.lines...)
}

// Find returns the first line containing s.
func (vm *VM) Find(s string) (Line, bool) {
	for _, l := range vm.Lines() {
		if strings.Contains(l.Text, s) {
			return l, true
		}
	}
	return Line{}, false
}

// Tail returns the last n lines of serial output (and any partial line).
func (vm *VM) Tail(n int) string {
	ls := vm.Lines()
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "%8.3fs %s\n", l.At.Seconds(), l.Text)
	}
	vm.mu.Lock()
	b.Write(vm.partial)
	vm.mu.Unlock()
	return b.String()
}

// Wait follows the serial log until a line contains one of the markers and
// returns that marker. It returns ErrDenied as soon as the firmware prints
// "Access Denied", an error if qemu exits or ctx ends first.
func (vm *VM) Wait(ctx context.Context, markers ...string) (string, error) {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	seen := 0
	for {
		vm.poll()
		vm.mu.Lock()
		lines := vm.lines[seen:]
		seen = len(vm.lines)
		partial := string(vm.partial)
		vm.mu.Unlock()
		for _, l := range lines {
			for _, m := range markers {
				if strings.Contains(l.Text, m) {
					return m, nil
				}
			}
			if strings.Contains(l.Text, AccessDenied) {
				return "", ErrDenied
			}
		}
		if strings.Contains(partial, AccessDenied) { // OVMF's menu may not end the line
			return "", ErrDenied
		}
		if done, err := vm.Exited(); done {
			vm.poll()
			vm.mu.Lock()
			more := len(vm.lines) > seen || len(vm.partial) > len(partial)
			vm.mu.Unlock()
			if more {
				continue // read what qemu wrote before exiting
			}
			return "", fmt.Errorf("qemu exited before %q appeared: %v", markers, err)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q: %w", markers, ctx.Err())
		case <-tick.C:
		}
	}
}

// WaitExit waits for qemu to exit (the guest powered off: -no-reboot).
func (vm *VM) WaitExit(ctx context.Context) error {
	select {
	case <-vm.qemuDone:
		vm.poll()
		return vm.qemuErr
	case <-ctx.Done():
		return fmt.Errorf("waiting for the VM to power off: %w", ctx.Err())
	}
}

// Monitor runs one HMP command on qemu's monitor (Config.Monitor), e.g.
// system_powerdown (the ACPI power button) or "sendkey ctrl-alt-delete",
// and returns once qemu prompts again.
func (vm *VM) Monitor(cmd string) error {
	if vm.monDir == "" {
		return errors.New("vmtest: the VM has no monitor (Config.Monitor)")
	}
	c, err := net.DialTimeout("unix", filepath.Join(vm.monDir, "s"), 5*time.Second)
	if err != nil {
		return fmt.Errorf("vmtest: monitor: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return fmt.Errorf("vmtest: monitor: %s: %w", cmd, err)
	}
	// The banner ends with a prompt; the command's output with another.
	var out []byte
	buf := make([]byte, 4096)
	for bytes.Count(out, []byte("(qemu) ")) < 2 {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return fmt.Errorf("vmtest: monitor: %s: %w (read %q)", cmd, err, out)
		}
	}
	return nil
}
