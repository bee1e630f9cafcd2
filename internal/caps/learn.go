package caps

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Run is what one run of the workload came to.
type Run struct {
	Exit    int  `json:"exit"`    // exit code, 128+N when signal N killed it
	Running bool `json:"running"` // still running when the learning duration ended (then killed)
	// Traced says whether Checks were recorded; Checks are the run's
	// capability checks, runtime set-up excluded.
	Traced bool    `json:"traced"`
	Checks []Check `json:"-"`
	Lost   uint64  `json:"lost,omitempty"` // trace records lost to a full ring
}

// Outcome describes the run's end in words: "exit 0", "running after the
// learning duration".
func (r Run) Outcome() string {
	if r.Running {
		return "still running at the end of the learning duration"
	}
	return fmt.Sprintf("exit %d", r.Exit)
}

// Runner runs the workload once with exactly the given capabilities.
type Runner interface {
	Run(ctx context.Context, caps []string) (Run, error)
}

// Methods Learn uses, as reported.
const (
	MethodTrace   = "trace+drop-one" // traced upper bound, then the drop-one search over it
	MethodDropOne = "drop-one"       // the drop-one search over every capability
)

// Need is one capability in the learned set, with the evidence.
type Need struct {
	Cap      string   `json:"cap"`
	About    string   `json:"about"`              // what the capability lets a process do
	Syscalls []string `json:"syscalls,omitempty"` // syscalls whose checks it passed (traced only)
	Paths    []string `json:"paths,omitempty"`    // kernel paths of those checks, "syscall: f > g > h"
	Without  string   `json:"without"`            // what happened when it was dropped
}

// Report is the result of Learn.
type Report struct {
	Method   string   `json:"method"`
	NoTrace  string   `json:"noTrace,omitempty"` // why tracing was not used
	Caps     []Need   `json:"caps"`              // the learned set, in capability order
	Upper    []string `json:"upper"`             // the set the search started from
	Offered  []string `json:"offered"`           // what the first run was given
	Baseline Run      `json:"baseline"`          // outcome with the upper bound
	Runs     int      `json:"runs"`              // workload runs in all
	Probes   int      `json:"probes"`            // no-audit probes seen and ignored
	Lost     uint64   `json:"lost,omitempty"`    // trace records lost to a full ring
	Note     string   `json:"note,omitempty"`
	Checks   []Check  `json:"checks,omitempty"` // the first run's checks (granted and denied)
	Elapsed  Duration `json:"elapsed"`
}

// Names returns the learned capabilities' names.
func (r *Report) Names() []string {
	out := make([]string, 0, len(r.Caps))
	for _, n := range r.Caps {
		out = append(out, n.Cap)
	}
	return out
}

// Duration is a time.Duration that prints as "1.5s" in JSON.
type Duration time.Duration

// MarshalText prints the duration as time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Learn finds the smallest set of capabilities among offered that keeps
// the workload's outcome. The first run gets all of offered; when it was
// traced, the capabilities its checks were granted are the upper bound,
// otherwise offered is. Then each capability of the upper bound is dropped
// in turn (in number order, for good), and is kept only when the run
// without it ends differently (another exit code, or stopping before the
// learning duration instead of running) or, when traced, is refused a
// capability check it was not refused before (an EPERM the workload may
// have swallowed). noTrace, when the runner cannot trace, says why.
func Learn(ctx context.Context, r Runner, offered []string, noTrace string) (*Report, error) {
	start := time.Now()
	offered = sortNames(append([]string(nil), offered...))
	rep := &Report{Offered: offered, Method: MethodDropOne, NoTrace: noTrace}
	first, err := r.Run(ctx, offered)
	rep.Runs++
	if err != nil {
		return nil, fmt.Errorf("run with every offered capability: %w", err)
	}
	upper, base := offered, first
	rep.Lost = first.Lost
	if first.Traced {
		rep.Method = MethodTrace
		rep.NoTrace = ""
		for _, c := range first.Checks {
			if c.Class == Probe {
				rep.Probes += c.Count
				continue
			}
			rep.Checks = append(rep.Checks, c)
		}
		upper = granted(first.Checks, offered)
		if len(upper) < len(offered) {
			b, err := r.Run(ctx, upper)
			rep.Runs++
			if err != nil {
				return nil, fmt.Errorf("run with the traced capabilities: %w", err)
			}
			if sameEnd(first, b) {
				base = b
			} else {
				rep.Note = fmt.Sprintf("with only the traced capabilities the workload ended differently (%s instead of %s): searching from every offered capability", b.Outcome(), first.Outcome())
				upper = offered
			}
		}
	}
	rep.Upper, rep.Baseline = upper, base
	keep := append([]string(nil), upper...)
	evidence := map[string]string{}
	for _, c := range upper {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		try := without(keep, c)
		got, err := r.Run(ctx, try)
		rep.Runs++
		if err != nil {
			return nil, fmt.Errorf("run without %s: %w", c, err)
		}
		if why := changed(base, got); why != "" {
			evidence[c] = why
			continue
		}
		keep = try
	}
	for _, c := range keep {
		n := Need{Cap: c, About: About(c), Without: evidence[c]}
		n.Syscalls, n.Paths = usedBy(first.Checks, c)
		rep.Caps = append(rep.Caps, n)
	}
	if rep.Caps == nil {
		rep.Caps = []Need{}
	}
	rep.Elapsed = Duration(time.Since(start))
	return rep, nil
}

// granted returns the capabilities of offered whose checks were granted.
func granted(checks []Check, offered []string) []string {
	in := map[string]bool{}
	for _, c := range offered {
		in[c] = true
	}
	var out []string
	for _, c := range checks {
		if c.Class == Granted && in[c.Cap] {
			out = append(out, c.Cap)
		}
	}
	return sortNames(out)
}

// sameEnd reports whether two runs ended the same way.
func sameEnd(a, b Run) bool {
	return a.Running == b.Running && (a.Running || a.Exit == b.Exit)
}

// changed says how got differs from base ("" when it does not): another
// end, or audited capability checks refused that base did not see.
func changed(base, got Run) string {
	if !sameEnd(base, got) {
		return fmt.Sprintf("%s instead of %s", got.Outcome(), base.Outcome())
	}
	if !got.Traced {
		return ""
	}
	seen := map[string]bool{}
	for _, c := range base.Checks {
		if c.Class == Denied {
			seen[c.Cap+" "+c.Syscall] = true
		}
	}
	var refused []string
	for _, c := range got.Checks {
		if c.Class == Denied && !seen[c.Cap+" "+c.Syscall] {
			s := c.Cap
			if c.Syscall != "" {
				s += " in " + c.Syscall
			}
			refused = append(refused, fmt.Sprintf("%s (%dx)", s, c.Count))
		}
	}
	if len(refused) == 0 {
		return ""
	}
	return fmt.Sprintf("same %s, but refused %s", got.Outcome(), strings.Join(refused, ", "))
}

// usedBy returns the syscalls and kernel paths whose checks of capability
// c were granted, most frequent first.
func usedBy(checks []Check, c string) (syscalls, paths []string) {
	seenS, seenP := map[string]bool{}, map[string]bool{}
	for _, k := range checks {
		if k.Cap != c || k.Class != Granted {
			continue
		}
		sc := k.Syscall
		if sc == "" {
			sc = "(no syscall)"
		}
		if !seenS[sc] {
			seenS[sc] = true
			syscalls = append(syscalls, sc)
		}
		p := sc + ": " + strings.Join(k.Path, " > ")
		if !seenP[p] {
			seenP[p] = true
			paths = append(paths, p)
		}
	}
	return syscalls, paths
}

// Explain returns the checks of capability c in a traced run, granted and
// denied first, then probes.
func Explain(run Run, c string) []Check {
	var out []Check
	for _, k := range run.Checks {
		if k.Cap == c {
			out = append(out, k)
		}
	}
	rank := map[Class]int{Granted: 0, Denied: 1, Probe: 2, Runtime: 3}
	sort.SliceStable(out, func(i, j int) bool { return rank[out[i].Class] < rank[out[j].Class] })
	return out
}
