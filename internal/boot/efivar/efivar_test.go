package efivar

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

var testPart = Partition{Number: 1, Start: 2048, Size: 524288, GUID: secureboot.MustGUID("5c3a6f2e-1b7d-4e8a-9f10-2b3c4d5e6f70")}

// The device path is laid out as the UEFI specification's tables say,
// written here field by field with encoding/binary (an independent
// construction), and reads back.
func TestFileOnPartition(t *testing.T) {
	got := FileOnPartition(testPart, "EFI/vessel/abc.efi")
	var want bytes.Buffer
	w := func(v any) { binary.Write(&want, binary.LittleEndian, v) }
	w(struct {
		Type, Sub uint8
		Len       uint16
		Part      uint32
		Start     uint64
		Size      uint64
		Sig       [16]byte
		MBRType   uint8
		SigType   uint8
	}{4, 1, 42, 1, 2048, 524288, testPart.GUID, 2, 2})
	path := `\EFI\vessel\abc.efi`
	w(struct {
		Type, Sub uint8
		Len       uint16
	}{4, 4, uint16(4 + 2*(len(path)+1))})
	for _, c := range path + "\x00" {
		w(uint16(c))
	}
	w([4]byte{0x7f, 0xff, 4, 0})
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("device path\n got %x\nwant %x", got, want.Bytes())
	}
	if d := DescribePath(got); d != `HD(1,GPT,5c3a6f2e-1b7d-4e8a-9f10-2b3c4d5e6f70)/\EFI\vessel\abc.efi` {
		t.Fatalf("DescribePath: %s", d)
	}
	if d := DescribePath([]byte{4, 4, 2, 0}); !strings.Contains(d, "malformed") {
		t.Fatalf("a node shorter than its header: %q", d)
	}
}

func TestLoadOptionRoundTrip(t *testing.T) {
	o := &LoadOption{Attributes: LoadOptionActive, Description: "vessel version 2 ✓", FilePath: FileOnPartition(testPart, "EFI/vessel/x.efi"), Optional: []byte("opt")}
	b := o.Bytes()
	// header: attributes, then the device path's length
	if binary.LittleEndian.Uint32(b) != 1 || int(binary.LittleEndian.Uint16(b[4:])) != len(o.FilePath) {
		t.Fatalf("header %x", b[:6])
	}
	back, err := ParseLoadOption(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Description != o.Description || !bytes.Equal(back.FilePath, o.FilePath) || string(back.Optional) != "opt" || back.Attributes != 1 {
		t.Fatalf("round trip: %+v", back)
	}
	for name, bad := range map[string][]byte{
		"short":          {1, 0, 0},
		"no NUL":         append([]byte{1, 0, 0, 0, 0, 0}, 'a', 0),
		"path too large": append([]byte{1, 0, 0, 0, 99, 0}, 0, 0),
	} {
		if _, err := ParseLoadOption(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestBootVariables(t *testing.T) {
	s := OpenDir(t.TempDir())
	if _, ok, err := s.BootCurrent(); ok || err != nil {
		t.Fatalf("BootCurrent of an empty store: %v %v", ok, err)
	}
	disk := &LoadOption{Attributes: LoadOptionActive, Description: "UEFI disk", FilePath: []byte{0x7f, 0xff, 4, 0}}
	n0, err := s.AddEntry(disk)
	if err != nil || n0 != 0 {
		t.Fatalf("first entry: %d %v", n0, err)
	}
	if err := s.SetBootOrder([]uint16{n0}); err != nil {
		t.Fatal(err)
	}
	o := &LoadOption{Attributes: LoadOptionActive, Description: "vessel version 2", FilePath: FileOnPartition(testPart, "EFI/vessel/a.efi")}
	n1, err := s.AddEntry(o)
	if err != nil || n1 != 1 {
		t.Fatalf("second entry: %d %v", n1, err)
	}
	// the same file path reuses the entry, with the new description
	o.Description = "vessel version 3"
	if n, err := s.AddEntry(o); err != nil || n != n1 {
		t.Fatalf("same path: entry %d, want %d (%v)", n, n1, err)
	}
	if e, err := s.Entry(n1); err != nil || e.Description != "vessel version 3" {
		t.Fatalf("entry %d: %+v %v", n1, e, err)
	}
	// the file holds the attributes, then the data
	raw, err := os.ReadFile(filepath.Join(s.Dir, "Boot0001-8be4df61-93ca-11d2-aa0d-00e098032b8c"))
	if err != nil || binary.LittleEndian.Uint32(raw) != AttrsBoot || !bytes.Equal(raw[4:], o.Bytes()) {
		t.Fatalf("Boot0001 on disk: %x %v", raw, err)
	}
	if err := s.SetBootNext(n1); err != nil {
		t.Fatal(err)
	}
	if n, ok, err := s.BootNext(); !ok || n != n1 || err != nil {
		t.Fatalf("BootNext %d %v %v", n, ok, err)
	}
	if err := s.ClearBootNext(); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.BootNext(); ok {
		t.Fatal("BootNext still set")
	}
	if err := s.BootFirst(n1); err != nil {
		t.Fatal(err)
	}
	if order, _ := s.BootOrder(); len(order) != 2 || order[0] != n1 || order[1] != n0 {
		t.Fatalf("BootOrder %v", order)
	}
	if err := s.RemoveEntry(n1); err != nil {
		t.Fatal(err)
	}
	if order, _ := s.BootOrder(); len(order) != 1 || order[0] != n0 {
		t.Fatalf("BootOrder after removal %v", order)
	}
	if _, err := s.Entry(n1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed entry: %v", err)
	}
	// damaged variables are named
	s.Set("BootOrder", Global, AttrsBoot, []byte{1, 2, 3})
	if _, err := s.BootOrder(); err == nil || !strings.Contains(err.Error(), "BootOrder") {
		t.Fatalf("odd BootOrder: %v", err)
	}
	os.WriteFile(filepath.Join(s.Dir, "BootCurrent-"+Global.String()), []byte{7}, 0o644)
	if _, _, err := s.BootCurrent(); err == nil || !strings.Contains(err.Error(), "BootCurrent") {
		t.Fatalf("short BootCurrent: %v", err)
	}
}

func TestEntryNames(t *testing.T) {
	if EntryName(0x1a) != "Boot001A" {
		t.Fatal(EntryName(0x1a))
	}
	if n, err := ParseEntryName("Boot001A"); err != nil || n != 0x1a {
		t.Fatal(n, err)
	}
	for _, bad := range []string{"Boot1A", "Boot001a", "Boat001A", "Boot00XZ", ""} {
		if _, err := ParseEntryName(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// FindPartition reads a GPT written by sfdisk (an independent tool) and
// agrees with sfdisk's own report of the partition's GUID, start and size.
func TestFindPartition(t *testing.T) {
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Skip("sfdisk is not installed (make deps: fdisk)")
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	img := filepath.Join(root, "dev", "vda")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 64<<20)
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=40960, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System Partition\"\nsize=20480, name=\"vessel-data\"\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	out, err := exec.Command("sfdisk", "--json", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Partitiontable struct {
			Partitions []struct {
				Start, Size uint64
				UUID        string
			}
		}
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		t.Fatal(err)
	}
	want := dump.Partitiontable.Partitions[0]
	// sysfs as the kernel shows it: /sys/class/block/vda1 -> .../vda/vda1
	sys := filepath.Join(root, "sys", "devices", "virtio", "block", "vda")
	for name, v := range map[string]string{"vda1": "1|2048|40960|EFI System Partition", "vda2": "2|43008|20480|vessel-data"} {
		f := strings.Split(v, "|")
		d := filepath.Join(sys, name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "partition"), []byte(f[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "start"), []byte(f[1]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "size"), []byte(f[2]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "uevent"), []byte("MAJOR=254\nDEVNAME="+name+"\nDEVTYPE=partition\nPARTN="+f[0]+"\nPARTNAME="+f[3]+"\n"), 0o644)
		os.MkdirAll(filepath.Join(root, "sys", "class", "block"), 0o755)
		os.Symlink(d, filepath.Join(root, "sys", "class", "block", name))
	}
	p, err := FindPartition(root, "EFI System Partition")
	if err != nil {
		t.Fatal(err)
	}
	if p.Number != 1 || p.Start != want.Start || p.Size != want.Size || !strings.EqualFold(p.GUID.String(), want.UUID) || p.Device != filepath.Join(root, "dev", "vda1") {
		t.Fatalf("found %+v (guid %s), sfdisk says %+v", p, p.GUID, want)
	}
	if _, err := FindPartition(root, "nothing"); err == nil || !strings.Contains(err.Error(), `no partition named "nothing"`) {
		t.Fatalf("missing partition: %v", err)
	}
}
