package caps

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Event is one capability check as the tracer saw it.
type Event struct {
	Cap     int    // capability number
	Ret     int32  // 0: granted; negative errno: denied
	PID     int    // thread group id (host pid namespace)
	StackID int64  // kernel stack in Trace.Stacks; negative: not recorded
	Comm    string // the task's command name at the time
	// Borrowed: the check was made with credentials the kernel put in
	// place of the task's own (override_creds; overlayfs copies a file up
	// with the mounter's credentials).
	Borrowed bool
	Count    int // how many identical checks (0 means 1)
}

// Trace is what a Tracer recorded during one run.
type Trace struct {
	Events []Event
	Stacks map[int64][]uint64 // kernel return addresses, innermost first
	Lost   uint64             // records dropped because the ring was full
}

// Class says what a capability check meant.
type Class string

const (
	// Granted: the workload asked and got the capability.
	Granted Class = "granted"
	// Denied: the workload asked and was refused (an EPERM or EACCES, or a
	// fallback path).
	Denied Class = "denied"
	// Probe: the kernel asked without auditing, to pick a policy rather
	// than to permit an operation (the memory-accounting path asks for
	// CAP_SYS_ADMIN on every mmap, brk and execve). Never reported.
	Probe Class = "probe"
	// Runtime: the OCI runtime setting the container up before the
	// workload's first instruction (runc's init process). Never reported.
	Runtime Class = "runtime"
	// Borrowed: checked against credentials the kernel lent the task
	// (overlayfs copy-up runs with the mounter's): the workload's own
	// capabilities play no part. Never counted.
	Borrowed Class = "borrowed"
)

// Check is a group of identical capability checks: same capability, class,
// syscall and kernel path.
type Check struct {
	Cap     string   `json:"cap"`
	Class   Class    `json:"class"`
	Syscall string   `json:"syscall,omitempty"` // e.g. "fchownat"; empty outside a syscall
	Path    []string `json:"path,omitempty"`    // kernel functions from the syscall inwards to the check
	Comm    string   `json:"comm"`              // first command name seen
	Count   int      `json:"count"`
}

// Symbolizer turns a kernel address into a function name.
type Symbolizer interface {
	Symbol(addr uint64) string
}

// probeFrames are kernel functions that check a capability without
// auditing it, to choose a policy: a check under one of them is a Probe.
var probeFrames = map[string]bool{
	"security_vm_enough_memory_mm": true, // mmap, brk, execve: root's memory reserve
	"__vm_enough_memory":           true,
	"cap_vm_enough_memory":         true,
}

// plumbing are the generic capability functions between a caller and
// cap_capable: they say nothing about why the check happened.
var plumbing = map[string]bool{
	"cap_capable": true, "security_capable": true, "ns_capable": true, "ns_capable_common": true,
	"capable": true, "ns_capable_noaudit": true, "ns_capable_setid": true, "has_ns_capability": true,
	"has_ns_capability_noaudit": true, "has_capability": true, "has_capability_noaudit": true,
	"file_ns_capable": true, "sk_ns_capable": true, "sk_capable": true, "sk_net_capable": true,
	"netlink_ns_capable": true, "netlink_capable": true, "netlink_net_capable": true,
	"capable_wrt_inode_uidgid": true, "bpf_trace_run5": true, "__bpf_trace_cap_capable": true,
	"__traceiter_cap_capable": true,
}

// runtimeComm reports whether a command name is runc's: its init process
// runs in the container's cgroup as "runc" and "exe" (re-executing
// /proc/self/exe), then "runc:[0:PARENT]" to "runc:[2:INIT]", sets the
// container up with every capability, drops them and execs the workload.
// (A workload whose own command is named runc or exe is misread.)
func runtimeComm(c string) bool {
	return c == "runc" || c == "exe" || strings.HasPrefix(c, "runc:[")
}

// Classify groups the events of a trace into checks, most frequent first
// within each capability, capabilities in number order.
func Classify(tr Trace, sym Symbolizer) []Check {
	type key struct {
		cap     int
		class   Class
		syscall string
		path    string
	}
	groups := map[key]*Check{}
	var order []key
	for _, ev := range tr.Events {
		frames := symbolize(tr.Stacks[ev.StackID], sym)
		class := classOf(ev, frames)
		syscall, path := kernelPath(frames)
		k := key{ev.Cap, class, syscall, strings.Join(path, " ")}
		c, ok := groups[k]
		if !ok {
			c = &Check{Cap: Name(ev.Cap), Class: class, Syscall: syscall, Path: path, Comm: ev.Comm}
			groups[k] = c
			order = append(order, k)
		}
		if ev.Count > 0 {
			c.Count += ev.Count
		} else {
			c.Count++
		}
	}
	out := make([]Check, 0, len(order))
	for _, k := range order {
		out = append(out, *groups[k])
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, _ := Number(out[i].Cap)
		b, _ := Number(out[j].Cap)
		if a != b {
			return a < b
		}
		return out[i].Count > out[j].Count
	})
	return out
}

func symbolize(addrs []uint64, sym Symbolizer) []string {
	if sym == nil {
		return nil
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, sym.Symbol(a))
	}
	return out
}

func classOf(ev Event, frames []string) Class {
	if runtimeComm(ev.Comm) {
		return Runtime
	}
	if ev.Borrowed {
		return Borrowed
	}
	for _, f := range frames {
		f = baseName(f)
		if probeFrames[f] || strings.HasSuffix(f, "_noaudit") {
			return Probe
		}
	}
	if ev.Ret == 0 {
		return Granted
	}
	return Denied
}

// kernelPath finds the syscall in an innermost-first stack and returns it
// with the interesting frames, outermost first: those between the syscall
// entry and the capability plumbing.
func kernelPath(frames []string) (syscall string, path []string) {
	// Innermost first: skip the tracer and capability plumbing.
	start := 0
	for i, f := range frames {
		if baseName(f) == "cap_capable" {
			start = i + 1
		}
	}
	end := len(frames)
	for i := start; i < len(frames); i++ {
		if s, ok := syscallName(frames[i]); ok {
			syscall, end = s, i
			break
		}
		if b := baseName(frames[i]); b == "do_syscall_64" || strings.HasPrefix(b, "entry_SYSCALL") || strings.HasPrefix(b, "asm_exc_") {
			end = i
			break
		}
	}
	for i := end - 1; i >= start; i-- {
		b := baseName(frames[i])
		if plumbing[b] || b == "" {
			continue
		}
		path = append(path, b)
	}
	return syscall, path
}

// syscallName recognises a syscall's entry function: __x64_sys_fchownat,
// __do_sys_X, __se_sys_X, __ia32_sys_X, __arm64_sys_X.
func syscallName(frame string) (string, bool) {
	b := baseName(frame)
	for _, p := range []string{"__x64_sys_", "__ia32_sys_", "__arm64_sys_", "__do_sys_", "__se_sys_", "__ia32_compat_sys_", "__x64_compat_sys_"} {
		if strings.HasPrefix(b, p) {
			return strings.TrimPrefix(b, p), true
		}
	}
	return "", false
}

// baseName drops the compiler's suffixes (.cold, .isra.0, .constprop.0)
// and an offset (+0x1f).
func baseName(f string) string {
	if i := strings.IndexByte(f, '+'); i >= 0 {
		f = f[:i]
	}
	if i := strings.IndexByte(f, '.'); i > 0 {
		f = f[:i]
	}
	return f
}

// Kallsyms resolves kernel addresses with /proc/kallsyms (root sees real
// addresses; with kptr_restrict=2 every address is zero and lookups fail).
type Kallsyms struct {
	addrs []uint64
	names []string
}

// LoadKallsyms reads /proc/kallsyms.
func LoadKallsyms() (*Kallsyms, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	defer f.Close()
	return ParseKallsyms(f)
}

// ParseKallsyms reads the /proc/kallsyms format: "ADDR TYPE NAME [MODULE]".
// Only text symbols (t, T) are kept.
func ParseKallsyms(r io.Reader) (*Kallsyms, error) {
	k := &Kallsyms{}
	type sym struct {
		a uint64
		n string
	}
	var syms []sym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || (fields[1] != "t" && fields[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		syms = append(syms, sym{a, fields[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kernel symbols: %w", err)
	}
	if len(syms) == 0 {
		return nil, fmt.Errorf("read kernel symbols: no addresses (kernel.kptr_restrict hides them)")
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].a < syms[j].a })
	for _, s := range syms {
		k.addrs = append(k.addrs, s.a)
		k.names = append(k.names, s.n)
	}
	return k, nil
}

// Symbol returns the function containing addr, or "0x..." when none does.
func (k *Kallsyms) Symbol(addr uint64) string {
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr }) - 1
	if i < 0 {
		return fmt.Sprintf("%#x", addr)
	}
	return k.names[i]
}
