package initrd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/supervise"
)

// runServices starts the manifest's services under vessel's supervisor
// (vessel up, one child of PID 1) and stays PID 1: it reaps every orphan,
// turns SIGTERM into a power-off and SIGINT (Ctrl-Alt-Del) into a reboot,
// stops the supervisor (which stops the services and unmounts their
// roots), syncs and remounts the data partition read-only before the
// machine goes down. window > 0 ends the run that long after every
// service is running (tests).
// It returns the reboot command to use.
func runServices(printf func(string, ...any), cmdline string, window time.Duration) (int, error) {
	if err := os.MkdirAll("/sys/fs/cgroup", 0o755); err == nil {
		if err := unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "nsdelegate"); err != nil && !errors.Is(err, unix.EBUSY) {
			return unix.LINUX_REBOOT_CMD_POWER_OFF, fmt.Errorf("mount cgroup2: %w", err)
		}
	}
	if err := unix.Mount("", HostDataDir, "", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return unix.LINUX_REBOOT_CMD_POWER_OFF, fmt.Errorf("remount the data partition read-write: %w", err)
	}
	if err := setupNet(printf, cmdline); err != nil {
		return unix.LINUX_REBOOT_CMD_POWER_OFF, err
	}
	joinClusters(printf, cmdline)
	pid, err := os.ReadFile(HostProductIDFile)
	if err != nil {
		return unix.LINUX_REBOOT_CMD_POWER_OFF, fmt.Errorf("product ID from the initrd: %w", err)
	}
	// Ctrl-Alt-Del becomes SIGINT to PID 1.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGCHLD)
	// The ACPI power button (qemu's system_powerdown) is a power-off request.
	power := make(chan struct{}, 1)
	watchPowerButton(printf, func() { power <- struct{}{} })
	exe, err := os.Executable()
	if err != nil {
		exe = HostInit
	}
	rec := hostBootRecord()
	args := supervisorArgsFor(rec, strings.TrimSpace(string(pid)))
	p, err := os.StartProcess(exe, args, &os.ProcAttr{
		Env:   []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=linux"},
		Files: []*os.File{nil, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return unix.LINUX_REBOOT_CMD_POWER_OFF, fmt.Errorf("start the supervisor: %w", err)
	}
	printf("supervisor started (pid %d): %s", p.Pid, strings.Join(args, " "))
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	checkPid := 0
	if rec != nil && rec.Trial {
		// A trial boot: failures reboot (into the default slot), and the
		// health check decides whether the slot becomes the default.
		cmd = unix.LINUX_REBOOT_CMD_RESTART
		cp, cargs, err := startTrialCheck(exe, rec, strings.TrimSpace(string(pid)))
		if err != nil {
			printf("FAILED: start the trial's health check: %v", err)
			unix.Kill(p.Pid, unix.SIGTERM)
		} else {
			checkPid = cp.Pid
			printf("trial boot of slot %s (version %d): health check started (pid %d): %s", rec.Slot, rec.Version, cp.Pid, argsString(cargs))
		}
	}
	hookPid := 0
	testUpdate := func() {
		if !slices.Contains(TestFlags(cmdline), "update") {
			return
		}
		hp, err := startTestUpdate(exe)
		if err != nil {
			printf("FAILED: vessel.test=update: %v", err)
			return
		}
		if hp != nil {
			hookPid = hp.Pid
			printf("vessel.test=update: %s (pid %d)", strings.Join(TestUpdateArgs(), " "), hp.Pid)
		}
	}
	up := make(chan string, 1)
	go watchServices(p.Pid, up)
	var timeout <-chan time.Time
	stopping := false
	var stopDeadline <-chan time.Time
	stop := func(why string) {
		if stopping {
			return
		}
		stopping = true
		printf("%s: stopping the supervisor", why)
		unix.Kill(p.Pid, unix.SIGTERM)
		stopDeadline = time.After(30 * time.Second)
	}
	for {
		select {
		case s := <-sigs:
			switch s {
			case unix.SIGTERM:
				cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
				stop("SIGTERM (power off)")
			case unix.SIGINT:
				cmd = unix.LINUX_REBOOT_CMD_RESTART
				stop("SIGINT (reboot)")
			}
		case <-power:
			cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
			stop("power button (power off)")
		case names := <-up:
			printf("services up: %s", names)
			printDM(printf)
			if checkPid == 0 && (rec == nil || !rec.Trial) {
				testUpdate()
			}
			if window > 0 {
				timeout = time.After(window)
			}
		case <-timeout:
			stop("vessel.test window over")
		case <-stopDeadline:
			printf("the supervisor did not stop in 30s: killing it")
			unix.Kill(-p.Pid, unix.SIGKILL)
		}
		// Reap everything that exited: PID 1 adopts every orphan.
		for {
			var ws unix.WaitStatus
			wpid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err != nil || wpid <= 0 {
				break
			}
			if wpid == checkPid && checkPid != 0 {
				checkPid = 0
				if ws.Exited() && ws.ExitStatus() == 0 {
					cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
					printf("trial boot of slot %s confirmed: it is the default slot now", rec.Slot)
					testUpdate()
				} else {
					cmd = unix.LINUX_REBOOT_CMD_RESTART
					stop(fmt.Sprintf("trial boot of slot %s failed its health check (%s): rebooting into the default slot", rec.Slot, waitString(ws)))
				}
				continue
			}
			if wpid == hookPid && hookPid != 0 {
				hookPid = 0
				os.Remove(UpdateIncoming)
				unix.Sync()
				if ws.Exited() && ws.ExitStatus() == 0 {
					cmd = unix.LINUX_REBOOT_CMD_RESTART
					stop("vessel.test=update: staged, rebooting into the trial")
				} else {
					printf("vessel.test=update: not staged (%s)", waitString(ws))
				}
				continue
			}
			if wpid == p.Pid {
				printf("supervisor exited (%s)", waitString(ws))
				shutdown(printf)
				return cmd, nil
			}
		}
	}
}

func waitString(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("status %d", ws.ExitStatus())
}

// shutdown syncs and leaves the data partition read-only (clean for the
// next boot), then the caller powers off or reboots.
func shutdown(printf func(string, ...any)) {
	unix.Sync()
	if err := unix.Mount("", HostDataDir, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		printf("remount %s read-only: %v", HostDataDir, err)
		return
	}
	printf("data partition clean (read-only)")
}

// setupNet brings lo up and, with vessel.ip=, the first other interface
// with that address.
func setupNet(printf func(string, ...any), cmdline string) error {
	if err := ifUp("lo", nil, 0); err != nil {
		return err
	}
	nc, ok, err := ParseNet(cmdline)
	if err != nil || !ok {
		return err
	}
	var name string
	for i := 0; i < 100 && name == ""; i++ {
		links, _ := filepath.Glob("/sys/class/net/*")
		for _, l := range links {
			if b := filepath.Base(l); b != "lo" {
				name = b
				break
			}
		}
		if name == "" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if name == "" {
		return errors.New("vessel.ip: no network interface appeared in 5s")
	}
	a := nc.Prefix.Addr().As4()
	if err := ifUp(name, a[:], nc.Prefix.Bits()); err != nil {
		return err
	}
	printf("network %s %s", name, nc.Prefix)
	return nil
}

// ifUp sets an IPv4 address (when addr is not nil) and brings the
// interface up, with the SIOCSIF* ioctls.
func ifUp(name string, addr []byte, bits int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if addr != nil {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(addr); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
			return fmt.Errorf("%s: set address: %w", name, err)
		}
		mask := make([]byte, 4)
		binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-bits))
		if err := ifr.SetInet4Addr(mask); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
			return fmt.Errorf("%s: set netmask: %w", name, err)
		}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: bring up: %w", name, err)
	}
	return nil
}

// SuperviseDir is where vessel up keeps its state in the host.
const SuperviseDir = RunDir + "/supervise"

// watchServices sends the names of the running services (and of those
// refused, with the reason) once the supervisor pid reports every service
// running or refused.
func watchServices(pid int, up chan<- string) {
	for {
		time.Sleep(200 * time.Millisecond)
		info, err := supervise.Running(SuperviseDir)
		if err != nil || info.Owner.Pid != pid {
			continue
		}
		sts, err := supervise.Services(SuperviseDir)
		if err != nil || len(sts) < len(info.Services) {
			continue
		}
		var names, refused []string
		settled := true
		for _, st := range sts {
			switch {
			case st.State == supervise.StateRunning:
				names = append(names, st.Name)
			case st.Error != "" && (st.State == supervise.StateFailed || st.State == supervise.StateBackoff):
				refused = append(refused, st.Name+" ("+st.Error+")")
			default:
				settled = false
			}
		}
		if settled {
			msg := strings.Join(names, ",")
			if len(refused) > 0 {
				msg += "; refused: " + strings.Join(refused, "; ")
			}
			up <- msg
			return
		}
	}
}

// printDM lists every device-mapper device with its table.
func printDM(printf func(string, ...any)) {
	names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(b))
		tbl, err := mount.DMTable(name)
		if err != nil {
			printf("dm %s: %v", name, err)
			continue
		}
		printf("dm %s %s table %s", filepath.Base(filepath.Dir(filepath.Dir(n))), name, strings.Join(tbl, "; "))
	}
}
