package caps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Watch records the capability checks a container is refused, so that a
// failure can name the capability it lacked (EPERM never says which gate
// it hit). Only refused checks leave the kernel.
type Watch struct {
	cg *Cgroup
	tr *Tracer
}

// NewWatch makes a fresh cgroup for the container to be placed under (see
// Parent) and traces the checks refused in it. It fails with ErrNoTracer
// where tracing is not possible.
//
// Its cgroup is named vessel-watch-PID-RANDOM; first it removes the empty
// ones of processes that are gone (a vessel killed while watching, e.g. a
// supervisor killed with SIGKILL, whose containers Recover removed).
func NewWatch() (*Watch, error) {
	sweepWatches()
	cg, err := NewCgroup(fmt.Sprintf("vessel-watch-%d", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoTracer, err)
	}
	tr, err := NewTracer(cg.ID, TraceOptions{DeniedOnly: true})
	if err != nil {
		return nil, errors.Join(err, cg.Remove())
	}
	return &Watch{cg: cg, tr: tr}, nil
}

// sweepWatches removes the watch cgroups (cgroup v2, and runc's v1
// copies on a hybrid host) whose vessel is gone. Only empty trees go
// (rmdir refuses a cgroup with processes); errors are ignored: a leftover
// is harmless and the next sweep tries again.
func sweepWatches() {
	mnt, err := Cgroup2Mount()
	if err != nil {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(mnt, "vessel-watch-*-*"))
	for _, d := range dirs {
		pid, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), "vessel-watch-"), "-")
		if n, err := strconv.Atoi(pid); !ok || err != nil || n <= 0 {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil || !errors.Is(err, os.ErrNotExist) {
			continue // alive (or a pid reused: left for a later sweep)
		}
		if removeTree(d) == nil {
			_ = removeV1("/" + filepath.Base(d))
		}
	}
}

// Parent is the cgroup path to give the container as its parent
// (ociruntime.Config.CgroupParent).
func (w *Watch) Parent() string { return w.cg.Path }

// Stop ends the watch, removes its cgroup and, when want is set, returns
// the refused checks of the workload: no probes, no runc set-up, no
// borrowed credentials. (Resolving kernel stacks costs a read of
// /proc/kallsyms: a run that went well can skip it.)
func (w *Watch) Stop(want bool) ([]Check, error) {
	tr, err := w.tr.Stop()
	err = errors.Join(err, w.cg.Remove(), removeV1(w.cg.Path))
	if !want || len(tr.Events) == 0 {
		return nil, err
	}
	// Symbols only when there is something to say.
	sym, serr := LoadKallsyms()
	if serr != nil {
		return nil, errors.Join(err, serr)
	}
	var out []Check
	for _, c := range Classify(tr, sym) {
		if c.Class == Denied {
			out = append(out, c)
		}
	}
	return out, err
}

// Hint names the refused capabilities in one line, "" when there are none
// (for vessel run: the advice is --cap-add).
func Hint(refused []Check) string {
	return hint(refused, func(short []string) string {
		return "--cap-add " + strings.Join(short, " --cap-add ") + ", or capabilities: in system.yaml"
	})
}

// ServiceHint is Hint for a service of system.yaml (vessel up
// --why-denied): the advice is the service's whole capabilities: line, the
// capabilities it has (have, names as in the manifest; nil: the runtime's
// default set) plus the refused ones.
func ServiceHint(refused []Check, have []string) string {
	return hint(refused, func(short []string) string {
		if have == nil {
			return "it has the runtime's default set: list what it needs in its capabilities: in system.yaml, " + strings.Join(short, ", ") + " included"
		}
		all := append([]string(nil), have...)
		for _, c := range short {
			all = append(all, "CAP_"+c)
		}
		all = sortNames(all)
		for i := range all {
			all[i] = Short(all[i])
		}
		return "capabilities: [" + strings.Join(all, ", ") + "] in system.yaml"
	})
}

func hint(refused []Check, advice func(short []string) string) string {
	if len(refused) == 0 {
		return ""
	}
	var what, short []string
	seen := map[string]bool{}
	for _, c := range refused {
		where := c.Syscall
		if where == "" {
			where = "the kernel"
		}
		what = append(what, fmt.Sprintf("%s (%s by %s, %dx)", c.Cap, where, c.Comm, c.Count))
		if !seen[c.Cap] {
			seen[c.Cap] = true
			short = append(short, Short(c.Cap))
		}
	}
	return fmt.Sprintf("the container was refused %s; if it needs that, grant it (%s); vessel caps learn finds the smallest set",
		strings.Join(what, ", "), advice(short))
}
