package vmtest

import (
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	a, err := Config{ESPDir: "/esp"}.Args("vars.fd", "serial.log", "")
	if err != nil {
		t.Fatal(err)
	}
	cmd := strings.Join(a, " ")
	for _, want := range []string{"-accel tcg", "-machine q35,smm=on", "driver=cfi.pflash01,property=secure,value=on",
		"readonly=on,file=" + OVMFCode, "unit=1,file=vars.fd", "file=fat:rw:/esp,format=raw,if=virtio", "-nic none", "-serial file:serial.log", "-no-reboot"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("args lack %q: %s", want, cmd)
		}
	}
	if strings.Contains(cmd, "tpm") {
		t.Error("a TPM without a socket")
	}
	if strings.Contains(cmd, "i6300esb") || strings.Contains(cmd, "-action") {
		t.Errorf("a watchdog nobody asked for: %s", cmd)
	}
	a, err = Config{ESPDir: "/esp", Watchdog: true}.Args("v", "s", "")
	if err != nil {
		t.Fatal(err)
	}
	if cmd = strings.Join(a, " "); !strings.Contains(cmd, "-device i6300esb -action watchdog=reset") || !strings.Contains(cmd, "-no-reboot") {
		t.Errorf("Watchdog: args lack the i6300ESB resetting the machine (and -no-reboot ending qemu then): %s", cmd)
	}
	a, err = Config{Disk: "/d.img", Net: []string{"hostfwd=tcp:127.0.0.1:8080-:80"}}.Args("v", "s", "/sock")
	if err != nil {
		t.Fatal(err)
	}
	cmd = strings.Join(a, " ")
	for _, want := range []string{"file=/d.img,format=raw,if=virtio", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80", "path=/sock", "tpm-tis"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("args lack %q: %s", want, cmd)
		}
	}
	// Diskless PXE: qemu's TFTP, no drive but the firmware's.
	a, err = Config{TFTPDir: "/tftp", BootFile: "bootx64.efi", Net: []string{"guestfwd=tcp:10.0.2.100:5000-cmd:nc 127.0.0.1 5000"}}.Args("v", "s", "")
	if err != nil {
		t.Fatal(err)
	}
	cmd = strings.Join(a, " ")
	for _, want := range []string{"user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:5000-cmd:nc 127.0.0.1 5000,tftp=/tftp,bootfile=bootx64.efi", "virtio-net-pci,netdev=n0,romfile="} {
		if !strings.Contains(cmd, want) {
			t.Errorf("args lack %q: %s", want, cmd)
		}
	}
	if strings.Contains(cmd, "if=virtio") || strings.Contains(cmd, "-nic none") {
		t.Errorf("a diskless PXE boot with a disk or without a NIC: %s", cmd)
	}
	for _, c := range []Config{
		{},
		{TFTPDir: "/t"},
		{TFTPDir: "/t,x", BootFile: "b"},
		{ESPDir: "/e", Disk: "/d"},
		{ESPDir: "/e", Net: []string{"hostfwd=tcp::8080-:80"}},
		{ESPDir: "/e", Net: []string{"smb=/tmp,127.0.0.1"}},
	} {
		if _, err := c.Args("v", "s", ""); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
