package caps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// ErrNoTracer is returned (wrapped) by NewTracer when this kernel or this
// process cannot trace capability checks: no BPF permission, or no
// capability:cap_capable tracepoint (before Linux 6.x; Debian 6.1 has
// none). Learn then falls back to the drop-one search alone.
var ErrNoTracer = errors.New("capability tracing is not available")

// Record layout written by the BPF program into the ring buffer.
const (
	recCap     = 0  // u32: capability number
	recRet     = 4  // s32: cap_capable's result, 0 granted, -EPERM denied
	recPidTgid = 8  // u64: tgid<<32 | pid
	recStack   = 16 // s64: kernel stack id in the stack map, <0: none
	recComm    = 24 // [16]byte: current->comm
	recFlags   = 40 // u64: flagBorrowed, flagCredKnown
	recSize    = 48

	// flagCredKnown: the task's credentials were read; flagBorrowed: the
	// check was made with credentials the kernel put in place of the
	// task's own (override_creds: overlayfs copy-up uses the mounter's).
	flagCredKnown = 1
	flagBorrowed  = 2

	stackDepth   = 32 // frames kept per kernel stack
	stackEntries = 8192
	ringSize     = 4 << 20
	// maxCgroupLevel is how deep below the cgroup2 root the tracer looks
	// for the workload's cgroup among the current task's ancestors.
	maxCgroupLevel = 12
)

// Tracer counts the capability checks of every task in one cgroup v2
// subtree through the capability:cap_capable raw tracepoint, with a BPF
// program assembled here (no compiler). The filter runs in the kernel:
// only checks made by tasks whose cgroup is the given one or below it
// reach user space, as a record with the capability, the result, the task
// and a kernel stack id.
type Tracer struct {
	objs   []interface{ Close() error }
	stacks *ebpf.Map
	lost   *ebpf.Map
	rd     *ringbuf.Reader
	done   chan struct{}

	mu     sync.Mutex
	events map[Event]int // identical checks counted, not stored one by one
	order  []Event
}

// TraceOptions tune a Tracer.
type TraceOptions struct {
	// DeniedOnly drops granted checks in the kernel: what watching a
	// service for refusals needs, at a fraction of the records.
	DeniedOnly bool
}

// NewTracer starts tracing the capability checks of the tasks in the
// cgroup v2 whose id (its inode number in the cgroup2 file system) is
// cgroupID, and in every cgroup below it. Close stops it.
func NewTracer(cgroupID uint64, opt TraceOptions) (_ *Tracer, err error) {
	if err := removeMemlock(); err != nil {
		return nil, fmt.Errorf("%w: raise the locked-memory limit: %v", ErrNoTracer, err)
	}
	t := &Tracer{done: make(chan struct{}), events: map[Event]int{}}
	defer func() {
		if err != nil {
			t.closeObjs()
		}
	}()
	ring, err := ebpf.NewMap(&ebpf.MapSpec{Name: "caps_events", Type: ebpf.RingBuf, MaxEntries: ringSize})
	if err != nil {
		return nil, fmt.Errorf("%w: create ring buffer: %v", ErrNoTracer, err)
	}
	t.objs = append(t.objs, ring)
	t.stacks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "caps_stacks", Type: ebpf.StackTrace,
		KeySize: 4, ValueSize: stackDepth * 8, MaxEntries: stackEntries})
	if err != nil {
		return nil, fmt.Errorf("%w: create stack map: %v", ErrNoTracer, err)
	}
	t.objs = append(t.objs, t.stacks)
	t.lost, err = ebpf.NewMap(&ebpf.MapSpec{Name: "caps_lost", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("%w: create counter map: %v", ErrNoTracer, err)
	}
	t.objs = append(t.objs, t.lost)
	// Borrowed credentials are the mounter's, which are rarely refused: a
	// denied-only tracer saves parsing the kernel's BTF (~100 ms).
	var cred [2]int32
	credOK := false
	if !opt.DeniedOnly {
		cred, credOK = credOffsets()
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "caps_capable", Type: ebpf.RawTracepoint, License: "GPL",
		Instructions: program(cgroupID, opt.DeniedOnly, ring.FD(), t.stacks.FD(), t.lost.FD(), cred, credOK),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: load the BPF program: %v", ErrNoTracer, err)
	}
	t.objs = append(t.objs, prog)
	lk, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "cap_capable", Program: prog})
	if err != nil {
		return nil, fmt.Errorf("%w: attach to the cap_capable tracepoint: %v", ErrNoTracer, err)
	}
	t.objs = append(t.objs, lk)
	t.rd, err = ringbuf.NewReader(ring)
	if err != nil {
		return nil, fmt.Errorf("%w: read the ring buffer: %v", ErrNoTracer, err)
	}
	go t.read()
	return t, nil
}

// credOffsets finds the byte offsets of real_cred and cred in the
// kernel's task_struct from its BTF; ok false when there is no BTF.
func credOffsets() (off [2]int32, ok bool) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return off, false
	}
	var task *btf.Struct
	if err := spec.TypeByName("task_struct", &task); err != nil {
		return off, false
	}
	found := 0
	for _, m := range task.Members {
		switch m.Name {
		case "real_cred":
			off[0] = int32(m.Offset.Bytes())
			found++
		case "cred":
			off[1] = int32(m.Offset.Bytes())
			found++
		}
	}
	return off, found == 2
}

// program is the BPF program: raw tracepoint arguments are cap_capable's
// (cred, target_ns, capable_ns, cap, ret). With the offsets of
// task_struct's real_cred and cred it also flags checks made with borrowed
// credentials: the checked cred is the task's cred, and that is not its
// real_cred.
func program(cgroupID uint64, deniedOnly bool, ring, stacks, lost int, cred [2]int32, credOK bool) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.LoadImm(asm.R7, int64(cgroupID), asm.DWord),
	}
	// Is cgroupID the current task's cgroup or one of its ancestors?
	// Levels are counted from the real root, whatever cgroup namespace
	// vessel is in, so every level is tried.
	for level := int32(1); level <= maxCgroupLevel; level++ {
		in = append(in,
			asm.Mov.Imm(asm.R1, level),
			asm.FnGetCurrentAncestorCgroupId.Call(),
			asm.JEq.Reg(asm.R0, asm.R7, "match"),
		)
	}
	in = append(in,
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
		asm.Mov.Reg(asm.R0, asm.R0).WithSymbol("match"), // a no-op to carry the label
	)
	if deniedOnly {
		in = append(in,
			asm.LoadMem(asm.R1, asm.R6, 4*8, asm.DWord), // args[4]: ret
			asm.JEq.Imm32(asm.R1, 0, "out"),
		)
	}
	in = append(in,
		asm.LoadMapPtr(asm.R1, ring),
		asm.Mov.Imm(asm.R2, recSize),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JNE.Imm(asm.R0, 0, "reserved"),
		// The ring is full: count the lost record.
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, lost),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Ja.Label("out"),

		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("reserved"),
		asm.LoadMem(asm.R1, asm.R6, 3*8, asm.DWord), // args[3]: cap
		asm.StoreMem(asm.R7, recCap, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R6, 4*8, asm.DWord), // args[4]: ret
		asm.StoreMem(asm.R7, recRet, asm.R1, asm.Word),
		asm.FnGetCurrentPidTgid.Call(),
		asm.StoreMem(asm.R7, recPidTgid, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, stacks),
		asm.Mov.Imm(asm.R3, 0), // kernel stack, no reuse of ids
		asm.FnGetStackid.Call(),
		asm.StoreMem(asm.R7, recStack, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Add.Imm(asm.R1, recComm),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnGetCurrentComm.Call(),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.R7, recFlags, asm.R1, asm.DWord),
	)
	if credOK {
		readPtr := func(off int32, slot int16) asm.Instructions {
			return asm.Instructions{
				asm.FnGetCurrentTask.Call(),
				asm.Mov.Reg(asm.R3, asm.R0),
				asm.Add.Imm(asm.R3, off),
				asm.Mov.Reg(asm.R1, asm.R10),
				asm.Add.Imm(asm.R1, int32(slot)),
				asm.Mov.Imm(asm.R2, 8),
				asm.FnProbeReadKernel.Call(),
				asm.JNE.Imm(asm.R0, 0, "submit"),
			}
		}
		in = append(in, readPtr(cred[0], -8)...)  // real_cred at fp-8
		in = append(in, readPtr(cred[1], -16)...) // cred at fp-16
		in = append(in,
			asm.Mov.Imm(asm.R1, flagCredKnown),
			asm.StoreMem(asm.R7, recFlags, asm.R1, asm.DWord),
			asm.LoadMem(asm.R1, asm.R6, 0, asm.DWord), // args[0]: the checked cred
			asm.LoadMem(asm.R2, asm.R10, -16, asm.DWord),
			asm.JNE.Reg(asm.R1, asm.R2, "submit"), // not the task's cred: another task's
			asm.LoadMem(asm.R3, asm.R10, -8, asm.DWord),
			asm.JEq.Reg(asm.R2, asm.R3, "submit"), // its own cred
			asm.Mov.Imm(asm.R1, flagCredKnown|flagBorrowed),
			asm.StoreMem(asm.R7, recFlags, asm.R1, asm.DWord),
		)
	}
	in = append(in,
		asm.Mov.Reg(asm.R1, asm.R7).WithSymbol("submit"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufSubmit.Call(),

		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	)
	return in
}

func (t *Tracer) read() {
	defer close(t.done)
	for {
		r, err := t.rd.Read()
		if err != nil {
			return // flushed by Stop, or closed
		}
		if len(r.RawSample) < recSize {
			continue
		}
		b := r.RawSample
		ev := Event{
			Cap:     int(binary.NativeEndian.Uint32(b[recCap:])),
			Ret:     int32(binary.NativeEndian.Uint32(b[recRet:])),
			PID:     int(binary.NativeEndian.Uint64(b[recPidTgid:]) >> 32),
			StackID: int64(binary.NativeEndian.Uint64(b[recStack:])),
			Comm:    cstring(b[recComm : recComm+16]),
		}
		f := binary.NativeEndian.Uint64(b[recFlags:])
		ev.Borrowed = f&flagBorrowed != 0
		t.mu.Lock()
		if t.events[ev] == 0 {
			t.order = append(t.order, ev)
		}
		t.events[ev]++
		t.mu.Unlock()
	}
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Stop detaches the program, drains what is left in the ring buffer and
// returns every check seen, each with its kernel stack (as addresses,
// innermost first), and the number of records lost to a full ring. It
// releases every kernel object; calling it twice is an error.
func (t *Tracer) Stop() (Trace, error) {
	if t.rd == nil {
		return Trace{}, errors.New("tracer already stopped")
	}
	// Detach first so no new records arrive, then let the reader drain.
	var errs []error
	for i := len(t.objs) - 1; i >= 0; i-- {
		if l, ok := t.objs[i].(link.Link); ok {
			errs = append(errs, l.Close())
			t.objs = append(t.objs[:i], t.objs[i+1:]...)
		}
	}
	// Flush makes the reader return what is left, then ErrFlushed.
	errs = append(errs, t.rd.Flush())
	<-t.done
	errs = append(errs, t.rd.Close())
	tr := Trace{Stacks: map[int64][]uint64{}}
	t.mu.Lock()
	for _, ev := range t.order {
		ev.Count = t.events[ev]
		tr.Events = append(tr.Events, ev)
	}
	t.mu.Unlock()
	for _, ev := range tr.Events {
		if ev.StackID < 0 {
			continue
		}
		if _, ok := tr.Stacks[ev.StackID]; ok {
			continue
		}
		var frames [stackDepth]uint64
		if err := t.stacks.Lookup(uint32(ev.StackID), &frames); err != nil {
			continue
		}
		var st []uint64
		for _, f := range frames {
			if f == 0 {
				break
			}
			st = append(st, f)
		}
		tr.Stacks[ev.StackID] = st
	}
	var lost uint64
	if err := t.lost.Lookup(uint32(0), &lost); err == nil {
		tr.Lost = lost
	}
	t.rd = nil
	errs = append(errs, t.closeObjs())
	if err := errors.Join(errs...); err != nil {
		return tr, fmt.Errorf("stop capability tracer: %w", err)
	}
	return tr, nil
}

func (t *Tracer) closeObjs() error {
	var errs []error
	for i := len(t.objs) - 1; i >= 0; i-- {
		errs = append(errs, t.objs[i].Close())
	}
	t.objs = nil
	return errors.Join(errs...)
}

// removeMemlock lifts RLIMIT_MEMLOCK for the BPF maps and programs, as
// cilium/ebpf/rlimit.RemoveMemlock does. That package is not imported: its
// init creates a BPF map to probe for memcg accounting, and as every vessel
// command links this package, that probe (about 1.5 ms with its mountinfo
// read) would run before every container start. Kernels since 5.11 charge
// BPF memory to the memory cgroup and ignore the limit, so there a refusal
// (no CAP_SYS_RESOURCE) is not an error; on older ones it is reported.
func removeMemlock() error {
	inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	err := unix.Prlimit(0, unix.RLIMIT_MEMLOCK, &inf, nil)
	if err == nil || memcgAccounted() {
		return nil
	}
	return err
}

// memcgAccounted reports whether the kernel charges BPF memory to the
// memory cgroup (5.11 and later) instead of RLIMIT_MEMLOCK.
func memcgAccounted() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 11
}
