package caps

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/manifest"
)

// model is a workload with a known answer: it exits 1 unless it holds
// every capability in needs; asks are checked only when held (the kernel
// takes another path without them: granted but not needed); swallowed are
// checks whose refusal it ignores.
type model struct {
	needs, asks, swallowed []string
	traced                 bool
	runs                   [][]string
}

func (m *model) Run(_ context.Context, caps []string) (Run, error) {
	m.runs = append(m.runs, caps)
	held := map[string]bool{}
	for _, c := range caps {
		held[c] = true
	}
	r := Run{Traced: m.traced}
	if m.traced {
		// Every run has the memory-accounting probes.
		r.Checks = append(r.Checks, Check{Cap: "CAP_SYS_ADMIN", Class: Probe, Syscall: "mmap", Count: 12})
	}
	for _, c := range append(append(append([]string(nil), m.needs...), m.asks...), m.swallowed...) {
		if contains(m.asks, c) && !held[c] {
			continue
		}
		cl := Granted
		if !held[c] {
			cl = Denied
			if !contains(m.swallowed, c) && contains(m.needs, c) {
				r.Exit = 1
			}
		}
		if m.traced {
			r.Checks = append(r.Checks, Check{Cap: c, Class: cl, Syscall: "sys_" + strings.ToLower(Short(c)), Path: []string{"f", "g"}, Count: 1})
		}
	}
	return r, nil
}

func contains(s []string, x string) bool {
	for _, e := range s {
		if e == x {
			return true
		}
	}
	return false
}

func TestLearnTraced(t *testing.T) {
	m := &model{traced: true, needs: []string{"CAP_NET_RAW", "CAP_CHOWN"}, asks: []string{"CAP_DAC_OVERRIDE"}}
	rep, err := Learn(context.Background(), m, All(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rep.Names(), []string{"CAP_CHOWN", "CAP_NET_RAW"}; !reflect.DeepEqual(got, want) {
		t.Errorf("learned %v, want %v", got, want)
	}
	if rep.Method != MethodTrace {
		t.Errorf("method %q, want %q", rep.Method, MethodTrace)
	}
	// One traced run with everything, one with the traced three, one per traced capability.
	if rep.Runs != 5 || len(m.runs) != 5 {
		t.Errorf("%d runs (%d made), want 5", rep.Runs, len(m.runs))
	}
	if got := rep.Upper; !reflect.DeepEqual(got, []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_NET_RAW"}) {
		t.Errorf("upper bound %v: the probe must not count, the unneeded check must", got)
	}
	if rep.Probes != 12 {
		t.Errorf("probes %d, want 12", rep.Probes)
	}
	n := rep.Caps[0]
	if n.Without != "exit 1 instead of exit 0" || !reflect.DeepEqual(n.Syscalls, []string{"sys_chown"}) ||
		!reflect.DeepEqual(n.Paths, []string{"sys_chown: f > g"}) || n.About == "" {
		t.Errorf("evidence for CAP_CHOWN: %+v", n)
	}
}

func TestLearnDropOneOnly(t *testing.T) {
	m := &model{needs: []string{"CAP_SYS_TIME"}, asks: []string{"CAP_KILL"}}
	offered := []string{"CAP_KILL", "CAP_CHOWN", "CAP_SYS_TIME", "CAP_NET_RAW"}
	rep, err := Learn(context.Background(), m, offered, "no tracepoint")
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Names(); !reflect.DeepEqual(got, []string{"CAP_SYS_TIME"}) {
		t.Errorf("learned %v, want [CAP_SYS_TIME]", got)
	}
	if rep.Method != MethodDropOne || rep.NoTrace != "no tracepoint" {
		t.Errorf("method %q (%q), want %q with the reason", rep.Method, rep.NoTrace, MethodDropOne)
	}
	if rep.Runs != 1+len(offered) {
		t.Errorf("%d runs, want %d", rep.Runs, 1+len(offered))
	}
	// Each capability is dropped from what is still kept, in number
	// order: CHOWN, KILL, NET_RAW, SYS_TIME.
	if r := m.runs[len(m.runs)-2]; !reflect.DeepEqual(r, []string{"CAP_SYS_TIME"}) {
		t.Errorf("the run without CAP_NET_RAW had %v, want [CAP_SYS_TIME] (CHOWN and KILL gone)", r)
	}
}

func TestLearnNothingNeeded(t *testing.T) {
	m := &model{traced: true}
	rep, err := Learn(context.Background(), m, All(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Caps) != 0 || rep.Runs != 2 {
		t.Errorf("learned %v in %d runs, want nothing in 2 (the traced run and the empty set)", rep.Names(), rep.Runs)
	}
}

// A refusal the workload swallows still counts: the EPERM count changed.
func TestLearnSwallowedRefusal(t *testing.T) {
	m := &model{traced: true, swallowed: []string{"CAP_FOWNER"}}
	rep, err := Learn(context.Background(), m, All(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Names(); !reflect.DeepEqual(got, []string{"CAP_FOWNER"}) {
		t.Fatalf("learned %v, want [CAP_FOWNER]", got)
	}
	if w := rep.Caps[0].Without; !strings.Contains(w, "refused CAP_FOWNER in sys_fowner") {
		t.Errorf("evidence %q, want the refused check named", w)
	}
}

// When the traced set does not reproduce the full run, the search falls
// back to every offered capability.
type liar struct{ model }

func (l *liar) Run(ctx context.Context, caps []string) (Run, error) {
	r, err := l.model.Run(ctx, caps)
	r.Checks = nil // the tracer saw nothing
	if !contains(caps, "CAP_SETUID") {
		r.Exit = 3
	}
	return r, err
}

func TestLearnTraceMissedSomething(t *testing.T) {
	l := &liar{model{traced: true}}
	offered := []string{"CAP_CHOWN", "CAP_SETUID"}
	rep, err := Learn(context.Background(), l, offered, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Names(); !reflect.DeepEqual(got, []string{"CAP_SETUID"}) {
		t.Errorf("learned %v, want [CAP_SETUID]", got)
	}
	if !strings.Contains(rep.Note, "exit 3 instead of exit 0") || !reflect.DeepEqual(rep.Upper, offered) {
		t.Errorf("note %q, upper %v: want the fallback explained", rep.Note, rep.Upper)
	}
}

func TestClassify(t *testing.T) {
	sym := fakeSyms{1: "bpf_prog_x", 2: "bpf_trace_run5", 3: "cap_capable", 4: "security_capable",
		5: "ns_capable_common", 6: "capable_wrt_inode_uidgid", 7: "chown_ok", 8: "setattr_prepare",
		9: "chown_common.isra.0", 10: "__x64_sys_fchownat", 11: "do_syscall_64", 12: "entry_SYSCALL_64_after_hwframe",
		20: "security_vm_enough_memory_mm", 21: "do_brk_flags", 22: "__x64_sys_brk"}
	tr := Trace{
		Stacks: map[int64][]uint64{
			1: {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
			2: {1, 2, 3, 20, 21, 22, 11, 12},
		},
		Events: []Event{
			{Cap: 0, StackID: 1, Comm: "chown"},
			{Cap: 0, StackID: 1, Comm: "chown"},
			{Cap: 0, Ret: -1, StackID: 1, Comm: "chown"},
			{Cap: 21, Ret: -1, StackID: 2, Comm: "chown"},
			{Cap: 21, StackID: 1, Comm: "runc:[2:INIT]"},
			{Cap: 13, StackID: -14, Comm: "ping"},
			{Cap: 21, StackID: 1, Comm: "exe"},
			{Cap: 3, StackID: 1, Comm: "chown", Borrowed: true},
		},
	}
	got := Classify(tr, sym)
	want := []Check{
		{Cap: "CAP_CHOWN", Class: Granted, Syscall: "fchownat", Path: []string{"chown_common", "setattr_prepare", "chown_ok"}, Comm: "chown", Count: 2},
		{Cap: "CAP_CHOWN", Class: Denied, Syscall: "fchownat", Path: []string{"chown_common", "setattr_prepare", "chown_ok"}, Comm: "chown", Count: 1},
		{Cap: "CAP_FOWNER", Class: Borrowed, Syscall: "fchownat", Path: []string{"chown_common", "setattr_prepare", "chown_ok"}, Comm: "chown", Count: 1},
		{Cap: "CAP_NET_RAW", Class: Granted, Comm: "ping", Count: 1},
		{Cap: "CAP_SYS_ADMIN", Class: Runtime, Syscall: "fchownat", Path: []string{"chown_common", "setattr_prepare", "chown_ok"}, Comm: "runc:[2:INIT]", Count: 2},
		{Cap: "CAP_SYS_ADMIN", Class: Probe, Syscall: "brk", Path: []string{"do_brk_flags", "security_vm_enough_memory_mm"}, Comm: "chown", Count: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Classify:\n got %+v\nwant %+v", got, want)
	}
}

type fakeSyms map[uint64]string

func (f fakeSyms) Symbol(a uint64) string { return f[a] }

func TestKallsyms(t *testing.T) {
	k, err := ParseKallsyms(strings.NewReader("ffffffff81000000 T _stext\nffffffff81000100 t helper\nffffffff81000200 D data\nffffffff81000300 T cap_capable\n"))
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[uint64]string{0xffffffff81000010: "_stext", 0xffffffff81000150: "helper",
		0xffffffff81000250: "helper", 0xffffffff81000300: "cap_capable", 0x10: "0x10"} {
		if got := k.Symbol(a); got != want {
			t.Errorf("Symbol(%#x) = %q, want %q", a, got, want)
		}
	}
	if _, err := ParseKallsyms(strings.NewReader("0000000000000000 T _stext\n")); err == nil || !strings.Contains(err.Error(), "kptr_restrict") {
		t.Errorf("all-zero addresses: %v, want an error naming kptr_restrict", err)
	}
}

func TestNames(t *testing.T) {
	for _, in := range []string{"net_raw", "NET_RAW", "cap_net_raw", " CAP_NET_RAW "} {
		if n, err := Normalize(in); err != nil || n != "CAP_NET_RAW" {
			t.Errorf("Normalize(%q) = %q, %v", in, n, err)
		}
	}
	if _, err := Normalize("everything"); err == nil || !strings.Contains(err.Error(), `"everything"`) {
		t.Errorf("unknown name: %v", err)
	}
	if got := FromMask(1<<0 | 1<<13 | 1<<40); !reflect.DeepEqual(got, []string{"CAP_CHOWN", "CAP_NET_RAW", "CAP_CHECKPOINT_RESTORE"}) {
		t.Errorf("FromMask = %v", got)
	}
	for _, n := range All() {
		if About(n) == "" {
			t.Errorf("%s has no description", n)
		}
	}
}

func TestServiceRun(t *testing.T) {
	s := manifest.ServiceSpec{Name: "web", Image: "nginx:1", Command: []string{"/bin/httpd"}, Args: []string{"-f"},
		Env: manifest.Env{"B": "2", "A": "1"}, User: "101", Network: "host", ReadOnly: true, Volumes: []string{"cache:/var/cache"}}
	img, args, flags, err := ServiceRun(s, "/tmp/v")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-e", "A=1", "-e", "B=2", "--user", "101", "--network", "host", "--read-only", "-v", "/tmp/v/cache:/var/cache"}
	if img != "nginx:1" || !reflect.DeepEqual(args, []string{"/bin/httpd", "-f"}) || !reflect.DeepEqual(flags, want) {
		t.Errorf("ServiceRun = %q %q %q", img, args, flags)
	}
	s.Volumes = []string{"../etc:/x"}
	if _, _, _, err := ServiceRun(s, "/tmp/v"); err == nil || !strings.Contains(err.Error(), "../etc") {
		t.Errorf("bad volume: %v", err)
	}
}
