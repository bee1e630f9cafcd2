package initrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/trust"
)

// rootSystem is what the verified-root step needs from the kernel beyond
// system: the kernel log (to name a corrupted block) and switch_root.
type rootSystem interface {
	kernelLog() string
	// switchRoot applies the plan and executes the host's init; it returns
	// only on failure.
	switchRoot(p SwitchRoot) error
}

// findData waits (bounded) for the data partition and returns its device.
func (s *Stage) findData(wait time.Duration) (string, error) {
	start := time.Now()
	for {
		dev, ok, err := FindPartition(s.Root, DataPartition)
		if err != nil {
			return "", err
		}
		if ok {
			return dev, nil
		}
		if time.Since(start) > wait {
			return "", fmt.Errorf("no partition named %s appeared in %v (is the disk attached and its virtio/storage module loaded?)", DataPartition, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// diskSource mounts the data partition read-only at DataMount.
func (s *Stage) diskSource() (string, error) {
	dev, err := s.findData(10 * time.Second)
	if err != nil {
		return "", fmt.Errorf("verified boot: %w", err)
	}
	if err := s.sys.mount(Mount{Source: dev, Target: DataMount, FSType: "ext4", Flags: msRdOnly | msNoSuid | msNoDev | msNoExec}); err != nil {
		return "", fmt.Errorf("verified boot: mount data partition %s read-only: %w", dev, err)
	}
	return dev, nil
}

// dataWritable remounts the data partition at DataMount read-write, or
// read-only again (after a sync). The initrd writes to it only for a
// trial's slot record, the TPM state at provisioning and a network boot's
// pull; the verified boot reads it read-only.
func (s *Stage) dataWritable(writable bool) error {
	flags := uintptr(msRemount | msNoSuid | msNoDev | msNoExec)
	if !writable {
		flags |= msRdOnly
		syncFS()
	}
	return s.sys.mount(Mount{Target: s.path(DataMount), Flags: flags})
}

// bootRoot is the verified boot: data partition (read-only), signed
// manifest verified with the initrd's CA and product ID, the host image
// mounted layer by layer through dm-verity under a fresh tmpfs upper, then
// switch_root into it. It returns only on failure; the caller powers off.
func (s *Stage) bootRoot(started float64) error {
	rs, ok := s.sys.(rootSystem)
	if !ok {
		return errors.New("verified boot: this system cannot switch root")
	}
	dev, err := s.manifestSource()
	if err != nil {
		return err
	}
	cas, err := trust.LoadCerts(s.path(CAFile))
	if err != nil {
		return fmt.Errorf("verified boot: the initrd's CA certificate: %w", err)
	}
	pid, err := os.ReadFile(s.path(ProductIDFile))
	if err != nil {
		return fmt.Errorf("verified boot: read product ID: %w", err)
	}
	ch, err := s.chooseBoot(cas, strings.TrimSpace(string(pid)))
	if err != nil {
		return fmt.Errorf("verified boot refused before mounting anything: %w", err)
	}
	vm, st := ch.VM, ch.Store
	s.printf("manifest %s verified: product %s version %d, signed by %q", vm.Digest(), vm.ProductID(), vm.Version(), vm.Signer().Subject.CommonName)
	cmdline, _ := os.ReadFile(s.path(CmdlineFile))
	tpmDev, openErr := s.openTPM()
	s.measureManifest(vm, tpmDev, openErr)
	tr, err := s.tpmBoot(vm.Version(), tpmDev, openErr, slices.Contains(TestFlags(string(cmdline)), "tpm"))
	if tpmDev != nil {
		tpmDev.Close()
	}
	if err != nil {
		return err
	}
	host := vm.Manifest().Hostfs
	img, err := mount.SystemImage(st, vm, host.Digest)
	if err != nil {
		return fmt.Errorf("verified boot: host %w", err)
	}
	mgr := &mount.Manager{Run: s.path(RunDir), Mode: mount.ModeVerity}
	t0 := time.Now()
	p, err := mgr.Mount(context.Background(), img, HostMountID, s.path(NewRoot), mount.Owner{}, mount.Options{Writable: true, HostRoot: true})
	if err != nil {
		return fmt.Errorf("verified boot: host %w%s", err, s.corruptions(rs))
	}
	rec := BootRecord{Product: vm.ProductID(), Version: vm.Version(), Manifest: vm.Digest(), Signer: vm.Signer().Subject.CommonName,
		Host: img.Name(), HostID: host.Digest, DataDev: dev, Mode: string(p.Mode), Started: started, TPM: tr,
		Slot: ch.Slot, Trial: ch.Trial, Signed: ch.Signed}
	for _, l := range p.Layers {
		bl := BootLayer{Digest: l.Digest}
		if l.Verity != nil {
			bl.Verity, bl.Root = l.Verity.Name, l.Verity.Root
		}
		rec.Layers = append(rec.Layers, bl)
	}
	s.printf("host image %s (%s): %d layers through %s, writable tmpfs upper, in %dms", img.Name(), host.Digest, len(p.Layers), p.Mode, time.Since(t0).Milliseconds())
	if rec.SwitchRoot, err = s.sys.uptime(); err != nil {
		return fmt.Errorf("read the boot clock: %w", err)
	}
	// The host's supervisor verifies the same manifest with the same trust.
	if err := os.WriteFile(s.path(HostCAFile), trust.PEMCerts(cas...), 0o644); err != nil {
		return fmt.Errorf("verified boot: hand the CA to the host: %w", err)
	}
	if err := os.WriteFile(s.path(HostProductIDFile), pid, 0o644); err != nil {
		return fmt.Errorf("verified boot: hand the product ID to the host: %w", err)
	}
	if err := writeBootRecord(s.path(BootRecordFile), rec); err != nil {
		return fmt.Errorf("verified boot: write %s: %w", BootRecordFile, err)
	}
	// After switch_root the host root is "/": its record says so, or the
	// host's vessel would list a mount at /sysroot that is not there.
	if err := mgr.Moved(HostMountID, "/"); err != nil {
		return fmt.Errorf("verified boot: record the host root's move: %w", err)
	}
	s.printf("switch_root to %s, exec %s, uptime %.3fs", img.Name(), HostInit, rec.SwitchRoot)
	sr := NewSwitchRoot(s.path(NewRoot))
	env, fd := s.wd.HandOver() // the host's init pings the watchdog from here on
	sr.Env, sr.Watchdog = append(sr.Env, env...), fd
	if err := rs.switchRoot(sr); err != nil {
		return fmt.Errorf("verified boot: switch_root: %w%s", err, s.corruptions(rs))
	}
	return nil
}

// corruptions names the blocks dm-verity refused, from the kernel log.
func (s *Stage) corruptions(rs rootSystem) string {
	var b strings.Builder
	for _, c := range Corruptions(rs.kernelLog()) {
		b.WriteString("; " + c.describe(s.Root))
	}
	return b.String()
}
