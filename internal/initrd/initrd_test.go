package initrd

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/boot/tcglog"
)

// fakeSystem records what the stage asks of the kernel.
type fakeSystem struct {
	mounts  []string
	loaded  []string
	failMod string
	exists  map[string]bool
	off     bool
}

func (f *fakeSystem) mount(m Mount) error {
	f.mounts = append(f.mounts, m.FSType+" "+m.Target)
	return nil
}
func (f *fakeSystem) loadModule(p string) (bool, error) {
	if strings.HasSuffix(p, f.failMod) && f.failMod != "" {
		return false, errors.New("key was rejected by service")
	}
	f.loaded = append(f.loaded, filepath.Base(p))
	return !f.exists[filepath.Base(p)], nil
}
func (f *fakeSystem) powerOff() error          { f.off = true; return nil }
func (f *fakeSystem) uptime() (float64, error) { return 0.5, nil }

// root writes an initrd-and-proc fixture; pcr7 is what the TPM reports.
func root(t *testing.T, cmdline string, pcr7 []byte, log *tcglog.Log) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		ProductIDFile: "0f8fad5b-d9cb-469f-a165-70867728950e\n",
		ModulesFile:   "/lib/modules/v/a.ko\n\n# comment\n/lib/modules/v/b.ko\n",
		CmdlineFile:   cmdline + "\n",
	}
	if pcr7 != nil {
		files[PCR7File] = fmt.Sprintf("%X\n", pcr7)
		files[EventLogFile] = string(log.Marshal())
	}
	for p, c := range files {
		os.MkdirAll(filepath.Dir(dir+p), 0o755)
		if err := os.WriteFile(dir+p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func eventLog() (*tcglog.Log, []byte) {
	l := &tcglog.Log{DigestSizes: map[uint16]int{tcglog.AlgSHA256: 32}}
	pcr := make([]byte, 32)
	for _, s := range []string{"SecureBoot", "PK", "KEK", "db", "dbx", "separator", "db cert"} {
		d := sha256.Sum256([]byte(s))
		l.Events = append(l.Events, tcglog.Event{PCR: 7, Type: 0x80000001, Digests: map[uint16][]byte{tcglog.AlgSHA256: d[:]}})
		h := sha256.New()
		h.Write(pcr)
		h.Write(d[:])
		pcr = h.Sum(nil)
	}
	return l, pcr
}

func TestRunMountsLoadsAndReports(t *testing.T) {
	log, pcr := eventLog()
	sys := &fakeSystem{exists: map[string]bool{"b.ko": true}}
	var out bytes.Buffer
	s := &Stage{Console: &out, Version: "v1", Root: root(t, "console=ttyS0 vessel.test=pcr7", pcr, log), sys: sys}
	if err := s.Run(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got := strings.Join(sys.mounts, ","); got != "proc /proc,sysfs /sys,devtmpfs /dev,tmpfs /run,securityfs /sys/kernel/security" {
		t.Errorf("mounts %s", got)
	}
	if got := strings.Join(sys.loaded, ","); got != "a.ko,b.ko" {
		t.Errorf("modules loaded %s", got)
	}
	o := out.String()
	for _, want := range []string{
		"vessel-init: started (vessel v1, product 0f8fad5b-d9cb-469f-a165-70867728950e) uptime 0.500s\n",
		"vessel-init: modules: 1 loaded in ",
		fmt.Sprintf("vessel-init: pcr7 sha256 tpm=%x replay=%x events=7 match=true\n", pcr, pcr),
	} {
		if !strings.Contains(o, want) {
			t.Errorf("console lacks %q:\n%s", want, o)
		}
	}
	if strings.Index(o, "started") > strings.Index(o, "modules:") {
		t.Error("the start marker must come before module loading (first userspace line)")
	}
}

func TestRunFailures(t *testing.T) {
	log, pcr := eventLog()
	bad := append([]byte(nil), pcr...)
	bad[0] ^= 1
	for name, c := range map[string]struct {
		cmdline string
		pcr     []byte
		failMod string
		want    string
	}{
		"pcr7 mismatch":  {"vessel.test=pcr7", bad, "", "PCR7 " + fmt.Sprintf("%x", bad) + " does not equal the replay"},
		"no TPM":         {"vessel.test=pcr7", nil, "", "read PCR7 (is there a TPM?)"},
		"module refused": {"", pcr, "b.ko", "load module /lib/modules/v/b.ko: key was rejected by service"},
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			s := &Stage{Console: &out, Version: "v1", Root: root(t, c.cmdline, c.pcr, log), sys: &fakeSystem{failMod: c.failMod}}
			err := s.Run()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want %q, got %v", c.want, err)
			}
		})
	}
}

func TestTestFlags(t *testing.T) {
	got := TestFlags("console=ttyS0 vessel.test=pcr7,foo quiet vessel.test=bar vessel.testx=no")
	if strings.Join(got, " ") != "pcr7 foo bar" {
		t.Fatalf("%v", got)
	}
	if ModuleOrder([]byte(" /a.ko \n#x\n\n/b.ko"))[1] != "/b.ko" {
		t.Fatal("module order")
	}
}

func TestFindPartition(t *testing.T) {
	root := t.TempDir()
	for dev, uevent := range map[string]string{
		"vda":  "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
		"vda1": "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=EFI System Partition\n",
		"vda2": "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=vessel-data\n",
		"sr0":  "DEVNAME=sr0\n",
	} {
		os.MkdirAll(filepath.Join(root+BlockClass, dev), 0o755)
		os.WriteFile(filepath.Join(root+BlockClass, dev, "uevent"), []byte(uevent), 0o644)
	}
	dev, ok, err := FindPartition(root, DataPartition)
	if err != nil || !ok || dev != "/dev/vda2" {
		t.Fatalf("got %q %v %v", dev, ok, err)
	}
	if _, ok, _ := FindPartition(root, "other"); ok {
		t.Fatal("found a partition that is not there")
	}
	var out bytes.Buffer
	s := &Stage{Console: &out, Root: root}
	if err := s.checkDisk(0); err != nil || !strings.Contains(out.String(), "vessel-init: data partition /dev/vda2 (vessel-data) after ") {
		t.Fatalf("%v %q", err, out.String())
	}
	os.RemoveAll(filepath.Join(root+BlockClass, "vda2"))
	if err := s.checkDisk(100 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "no partition named vessel-data appeared") {
		t.Fatalf("want a bounded wait error, got %v", err)
	}
}
