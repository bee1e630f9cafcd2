package mount

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Device-mapper ioctls, as data. The initrd has no dmsetup (and no udev),
// so vessel talks to /dev/mapper/control itself: DM_DEV_CREATE names the
// device, DM_TABLE_LOAD (read-only) loads one verity target, DM_DEV_SUSPEND
// without the suspend flag makes the table live, DM_DEV_REMOVE takes it
// down. The structures are struct dm_ioctl and struct dm_target_spec of
// <linux/dm-ioctl.h>; the layout is fixed by the kernel ABI (a 312-byte
// header, then 40-byte target specs each followed by its NUL-terminated
// parameters, padded to 8 bytes).

// Sizes and offsets of the kernel structures.
const (
	dmHeaderSize = 312 // sizeof(struct dm_ioctl)
	dmSpecSize   = 40  // sizeof(struct dm_target_spec)
	dmNameLen    = 128
	dmUUIDLen    = 129
	dmTypeLen    = 16

	dmOffDataSize    = 12
	dmOffDataStart   = 16
	dmOffTargetCount = 20
	dmOffOpenCount   = 24
	dmOffFlags       = 28
	dmOffEventNr     = 32
	dmOffDev         = 40
	dmOffName        = 48
	dmOffUUID        = dmOffName + dmNameLen
)

// Flags of struct dm_ioctl.
const (
	dmReadOnlyFlag = 1 << 0
	dmSuspendFlag  = 1 << 1
)

// dmVersion is the ioctl interface version vessel speaks: major 4 is the
// only one Linux has had; minor 0 asks for nothing newer.
var dmVersion = [3]uint32{4, 0, 0}

// dmTarget is one line of a device-mapper table.
type dmTarget struct {
	Start, Length uint64 // in 512-byte sectors
	Type          string
	Params        string
}

// parseDMTable reads a one-line table as dmsetup takes it:
// "START LENGTH TYPE PARAMS...".
func parseDMTable(line string) (dmTarget, error) {
	f := strings.Fields(line)
	if len(f) < 3 {
		return dmTarget{}, fmt.Errorf("device-mapper table %q: want START LENGTH TYPE PARAMS", line)
	}
	var t dmTarget
	if _, err := fmt.Sscan(f[0]+" "+f[1], &t.Start, &t.Length); err != nil {
		return dmTarget{}, fmt.Errorf("device-mapper table %q: %w", line, err)
	}
	t.Type, t.Params = f[2], strings.Join(f[3:], " ")
	if len(t.Type) >= dmTypeLen {
		return dmTarget{}, fmt.Errorf("device-mapper target type %q is longer than %d bytes", t.Type, dmTypeLen-1)
	}
	return t, nil
}

// dmRequest encodes a struct dm_ioctl for the device name with flags and,
// for DM_TABLE_LOAD, the targets after it.
func dmRequest(name string, flags uint32, targets []dmTarget) ([]byte, error) {
	if name == "" || len(name) >= dmNameLen || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("device-mapper name %q must be 1 to %d bytes without '/'", name, dmNameLen-1)
	}
	var body bytes.Buffer
	for _, t := range targets {
		params := append([]byte(t.Params), 0)
		for (dmSpecSize+len(params))%8 != 0 {
			params = append(params, 0)
		}
		spec := make([]byte, dmSpecSize)
		ne := binary.NativeEndian
		ne.PutUint64(spec[0:], t.Start)
		ne.PutUint64(spec[8:], t.Length)
		ne.PutUint32(spec[20:], uint32(dmSpecSize+len(params))) // next: offset of the next spec from this one
		copy(spec[24:24+dmTypeLen-1], t.Type)
		body.Write(spec)
		body.Write(params)
	}
	b := make([]byte, dmHeaderSize, dmHeaderSize+body.Len())
	ne := binary.NativeEndian
	for i, v := range dmVersion {
		ne.PutUint32(b[4*i:], v)
	}
	b = append(b, body.Bytes()...)
	ne.PutUint32(b[dmOffDataSize:], uint32(len(b)))
	ne.PutUint32(b[dmOffDataStart:], dmHeaderSize)
	ne.PutUint32(b[dmOffTargetCount:], uint32(len(targets)))
	ne.PutUint32(b[dmOffFlags:], flags)
	copy(b[dmOffName:dmOffName+dmNameLen-1], name)
	return b, nil
}

// dmReply is what the kernel wrote back into the header.
type dmReply struct {
	Version   [3]uint32
	Flags     uint32
	OpenCount int32
	Dev       uint64 // the kernel's new_encode_dev form
	Name      string
}

func parseDMReply(b []byte) (dmReply, error) {
	if len(b) < dmHeaderSize {
		return dmReply{}, fmt.Errorf("device-mapper reply of %d bytes, want at least %d", len(b), dmHeaderSize)
	}
	ne := binary.NativeEndian
	var r dmReply
	for i := range r.Version {
		r.Version[i] = ne.Uint32(b[4*i:])
	}
	r.Flags = ne.Uint32(b[dmOffFlags:])
	r.OpenCount = int32(ne.Uint32(b[dmOffOpenCount:]))
	r.Dev = ne.Uint64(b[dmOffDev:])
	name := b[dmOffName : dmOffName+dmNameLen]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	r.Name = string(name)
	return r, nil
}

// Minor is the device's minor number (/dev/dm-MINOR).
func (r dmReply) Minor() uint32 { return uint32(r.Dev&0xff) | uint32((r.Dev>>12)&0xfff00) }

// Major is the device's major number.
func (r dmReply) Major() uint32 { return uint32((r.Dev & 0xfff00) >> 8) }

// dmStatusTableFlag asks DM_TABLE_STATUS for the table rather than the status.
const dmStatusTableFlag = 1 << 4

// parseDMTargets reads the targets the kernel wrote after the header of a
// DM_TABLE_STATUS reply (n targets from data_start), as table lines.
func parseDMTargets(b []byte) ([]string, error) {
	if len(b) < dmHeaderSize {
		return nil, fmt.Errorf("device-mapper reply of %d bytes", len(b))
	}
	ne := binary.NativeEndian
	n := ne.Uint32(b[dmOffTargetCount:])
	end := int(ne.Uint32(b[dmOffDataSize:]))
	off := int(ne.Uint32(b[dmOffDataStart:]))
	if end > len(b) {
		end = len(b)
	}
	var out []string
	for i := uint32(0); i < n; i++ {
		if off < 0 || off+dmSpecSize > end {
			return nil, fmt.Errorf("device-mapper reply: target %d at offset %d runs past %d bytes", i, off, end)
		}
		spec := b[off : off+dmSpecSize]
		typ := spec[24 : 24+dmTypeLen]
		if j := bytes.IndexByte(typ, 0); j >= 0 {
			typ = typ[:j]
		}
		params := b[off+dmSpecSize : end]
		if j := bytes.IndexByte(params, 0); j >= 0 {
			params = params[:j]
		}
		out = append(out, fmt.Sprintf("%d %d %s %s", ne.Uint64(spec[0:]), ne.Uint64(spec[8:]), typ, params))
		next := int(ne.Uint32(spec[20:]))
		if next <= 0 && i+1 < n {
			return nil, fmt.Errorf("device-mapper reply: target %d has no next offset", i)
		}
		// In replies, next is relative to the start of the data area.
		off = int(ne.Uint32(b[dmOffDataStart:])) + next
	}
	return out, nil
}
