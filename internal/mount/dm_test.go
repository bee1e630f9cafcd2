package mount

import (
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The encoded header must have the layout of x/sys/unix's DmIoctl (itself
// generated from <linux/dm-ioctl.h>): an independent statement of the ABI.
func TestDMRequestLayout(t *testing.T) {
	if unix.SizeofDmIoctl != dmHeaderSize || unix.SizeofDmTargetSpec != dmSpecSize {
		t.Fatalf("sizes %d/%d, kernel headers say %d/%d", dmHeaderSize, dmSpecSize, unix.SizeofDmIoctl, unix.SizeofDmTargetSpec)
	}
	var h unix.DmIoctl
	for name, c := range map[string][2]uintptr{
		"data_size":    {dmOffDataSize, unsafe.Offsetof(h.Data_size)},
		"data_start":   {dmOffDataStart, unsafe.Offsetof(h.Data_start)},
		"target_count": {dmOffTargetCount, unsafe.Offsetof(h.Target_count)},
		"open_count":   {dmOffOpenCount, unsafe.Offsetof(h.Open_count)},
		"flags":        {dmOffFlags, unsafe.Offsetof(h.Flags)},
		"event_nr":     {dmOffEventNr, unsafe.Offsetof(h.Event_nr)},
		"dev":          {dmOffDev, unsafe.Offsetof(h.Dev)},
		"name":         {dmOffName, unsafe.Offsetof(h.Name)},
		"uuid":         {dmOffUUID, unsafe.Offsetof(h.Uuid)},
	} {
		if c[0] != c[1] {
			t.Errorf("%s at offset %d, kernel header says %d", name, c[0], c[1])
		}
	}
	if dmReadOnlyFlag != unix.DM_READONLY_FLAG || dmSuspendFlag != unix.DM_SUSPEND_FLAG {
		t.Error("flag values differ from the kernel header")
	}

	v := Verity{DataBlocks: 10, DataBlockSize: 4096, HashBlockSize: 4096, HashStart: 11, Algorithm: "sha256", Root: strings.Repeat("ab", 32), Salt: "-"}
	tg, err := parseDMTable(v.Table("/dev/loop3"))
	if err != nil {
		t.Fatal(err)
	}
	if tg.Start != 0 || tg.Length != 80 || tg.Type != "verity" || !strings.HasPrefix(tg.Params, "1 /dev/loop3 /dev/loop3 4096 4096 10 11 sha256 abab") {
		t.Fatalf("parsed table %+v", tg)
	}
	b, err := dmRequest("vessel-x", dmReadOnlyFlag, []dmTarget{tg})
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	if len(b)%8 != 0 || int(ne.Uint32(b[dmOffDataSize:])) != len(b) || ne.Uint32(b[dmOffDataStart:]) != dmHeaderSize {
		t.Fatalf("data_size %d data_start %d for %d bytes (want a multiple of 8)", ne.Uint32(b[dmOffDataSize:]), ne.Uint32(b[dmOffDataStart:]), len(b))
	}
	if ne.Uint32(b[0:]) != 4 || ne.Uint32(b[dmOffTargetCount:]) != 1 || ne.Uint32(b[dmOffFlags:]) != unix.DM_READONLY_FLAG {
		t.Fatalf("header version/count/flags wrong: % x", b[:32])
	}
	spec := b[dmHeaderSize:]
	if ne.Uint64(spec[8:]) != 80 || string(spec[24:30]) != "verity" || spec[30] != 0 {
		t.Fatalf("target spec % x", spec[:dmSpecSize])
	}
	if next := ne.Uint32(spec[20:]); int(next) != len(spec) {
		t.Fatalf("next %d, spec plus params are %d bytes", next, len(spec))
	}
	params := spec[dmSpecSize:]
	if i := strings.IndexByte(string(params), 0); i < 0 || string(params[:i]) != tg.Params {
		t.Fatalf("params %q", params)
	}
	r, err := parseDMReply(b)
	if err != nil || r.Name != "vessel-x" || r.Version != [3]uint32{4, 0, 0} {
		t.Fatalf("reply %+v %v", r, err)
	}
	// new_encode_dev(MKDEV(254, 300)): minor low byte, major, minor high bits.
	ne.PutUint64(b[dmOffDev:], uint64(300&0xff)|uint64(254)<<8|uint64(300&^0xff)<<12)
	r, _ = parseDMReply(b)
	if r.Major() != 254 || r.Minor() != 300 {
		t.Fatalf("dev %d:%d, want 254:300", r.Major(), r.Minor())
	}
	if r.Major() != unix.Major(r.Dev) || r.Minor() != unix.Minor(r.Dev) {
		t.Fatalf("dev decoding differs from unix.Major/Minor")
	}
}

func TestDMRequestRejects(t *testing.T) {
	for _, name := range []string{"", "a/b", strings.Repeat("x", 128)} {
		if _, err := dmRequest(name, 0, nil); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	for _, line := range []string{"0 8", "x 8 verity 1", "0 8 " + strings.Repeat("t", 16) + " 1"} {
		if _, err := parseDMTable(line); err == nil {
			t.Errorf("table %q accepted", line)
		}
	}
}

// A DM_TABLE_STATUS reply as the kernel's retrieve_status writes it: specs
// from data_start, next relative to the data area, data_size = used.
func TestParseDMTargets(t *testing.T) {
	ne := binary.NativeEndian
	b := make([]byte, 1024)
	ne.PutUint32(b[dmOffDataStart:], dmHeaderSize)
	ne.PutUint32(b[dmOffTargetCount:], 2)
	off := dmHeaderSize
	for i, c := range []struct{ typ, params string }{{"verity", "1 7:0 7:0 4096 4096 10 11 sha256 ab -"}, {"linear", "7:1 0"}} {
		spec := b[off:]
		ne.PutUint64(spec[0:], uint64(i*80))
		ne.PutUint64(spec[8:], 80)
		copy(spec[24:], c.typ)
		copy(spec[dmSpecSize:], c.params)
		used := off + dmSpecSize + len(c.params) + 1
		ne.PutUint32(b[dmOffDataSize:], uint32(used))
		off = (used + 7) &^ 7
		ne.PutUint32(spec[20:], uint32(off-dmHeaderSize))
	}
	got, err := parseDMTargets(b)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != "0 80 verity 1 7:0 7:0 4096 4096 10 11 sha256 ab -|80 80 linear 7:1 0" {
		t.Fatalf("%q", got)
	}
	ne.PutUint32(b[dmOffTargetCount:], 9)
	if _, err := parseDMTargets(b); err == nil {
		t.Fatal("a reply claiming more targets than it holds was accepted")
	}
}
