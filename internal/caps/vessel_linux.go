package caps

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/manifest"
)

// VesselRunner runs a workload as a container through the vessel binary:
// `vessel run --cgroup-parent CG --cap-drop ALL --cap-add X... IMAGE CMD`,
// in a cgroup v2 it creates per run, traced when Trace is set.
type VesselRunner struct {
	Vessel   string        // the vessel binary
	Global   []string      // global flags before "run", e.g. --root DIR
	RunFlags []string      // more vessel run flags: -e, --user, -v, --network, --read-only
	Image    string        // image reference
	Args     []string      // command and arguments (empty: the image's)
	Duration time.Duration // stop the workload after this long (0: wait until it exits)
	Trace    bool          // trace capability checks (see NewTracer)
	Sym      Symbolizer    // kernel symbols for traced runs
	// Output receives the workload's stdout and stderr (nil: discarded).
	Output io.Writer
}

// NewVesselRunner returns a runner for image, tracing when this machine
// can. noTrace says why it cannot ("" when it can).
func NewVesselRunner(vessel, image string, args []string) (r *VesselRunner, noTrace string) {
	r = &VesselRunner{Vessel: vessel, Image: image, Args: args}
	if err := CanTrace(); err != nil {
		return r, err.Error()
	}
	sym, err := LoadKallsyms()
	if err != nil {
		return r, err.Error()
	}
	r.Trace, r.Sym = true, sym
	return r, ""
}

// CanTrace checks that tracing works here by starting and stopping a
// tracer on a throwaway cgroup.
func CanTrace() error {
	cg, err := NewCgroup("vessel-caps-probe")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoTracer, err)
	}
	t, err := NewTracer(cg.ID, TraceOptions{})
	if err == nil {
		_, err = t.Stop()
	}
	return errors.Join(err, cg.Remove())
}

// Run runs the workload once with exactly caps.
func (v *VesselRunner) Run(ctx context.Context, caps []string) (res Run, err error) {
	cg, err := NewCgroup("vessel-caps")
	if err != nil {
		return Run{}, err
	}
	defer func() { err = errors.Join(err, cg.Remove(), removeV1(cg.Path)) }()
	var tr *Tracer
	if v.Trace {
		if tr, err = NewTracer(cg.ID, TraceOptions{}); err != nil {
			return Run{}, err
		}
		defer func() {
			if tr != nil {
				_, serr := tr.Stop()
				err = errors.Join(err, serr)
			}
		}()
	}
	b := make([]byte, 6)
	rand.Read(b)
	args := append(append([]string(nil), v.Global...), "run", "--name", "caps-"+hex.EncodeToString(b),
		"--cgroup-parent", cg.Path, "--cap-drop", "ALL")
	for _, c := range caps {
		args = append(args, "--cap-add", Short(c))
	}
	args = append(append(append(args, v.RunFlags...), v.Image), v.Args...)
	cmd := exec.Command(v.Vessel, args...)
	var errOut tail
	out := v.Output
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, io.MultiWriter(out, &errOut)
	if err := cmd.Start(); err != nil {
		return Run{}, fmt.Errorf("start %s run: %w", v.Vessel, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The duration counts from the container's start, not vessel run's
	// (mounting and verifying can take a while on a loaded machine): runc
	// makes the container's cgroup under ours just before starting it.
	timeout := make(chan struct{})
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	if v.Duration > 0 {
		go func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for !hasSubdir(cg.Dir) {
				select {
				case <-stopWatch:
					return
				case <-tick.C:
				}
			}
			t := time.NewTimer(v.Duration)
			defer t.Stop()
			select {
			case <-stopWatch:
			case <-t.C:
				close(timeout)
			}
		}()
	}
	var werr error
	select {
	case werr = <-done:
	case <-timeout:
		res.Running = true
		err = cg.Kill() // the container's processes; vessel run then cleans up
		werr = <-done
	case <-ctx.Done():
		_ = cg.Kill()
		<-done
		return Run{}, ctx.Err()
	}
	if err != nil {
		return Run{}, err
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return Run{}, fmt.Errorf("wait for %s run: %w", v.Vessel, werr)
	}
	res.Exit = cmd.ProcessState.ExitCode()
	if line := errOut.vesselError(); line != "" && !res.Running {
		// vessel itself failed (image not found, runtime error): no
		// outcome of the workload to compare.
		return Run{}, errors.New(strings.TrimPrefix(line, "vessel: "))
	}
	if tr != nil {
		t, serr := tr.Stop()
		tr = nil
		if serr != nil {
			return Run{}, serr
		}
		res.Traced, res.Lost = true, t.Lost
		for _, c := range Classify(t, v.Sym) {
			if c.Class != Runtime {
				res.Checks = append(res.Checks, c)
			}
		}
	}
	return res, nil
}

// hasSubdir reports whether dir has a subdirectory.
func hasSubdir(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.IsDir() {
			return true
		}
	}
	return false
}

// tail keeps the last 4 KiB written to it.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

// vesselError returns vessel's own error line ("vessel: ..."), if the
// last line is one and it is not the exit of the container (vessel prints
// nothing for that).
func (t *tail) vesselError() string {
	sc := bufio.NewScanner(bytes.NewReader(t.b))
	last := ""
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			last = s
		}
	}
	if strings.HasPrefix(last, "vessel: ") {
		return last
	}
	return ""
}

// removeV1 removes the directories runc made for cgroup path in the cgroup
// v1 hierarchies of a hybrid host (it removes the container's own, not the
// parent vessel gave it).
func removeV1(path string) error {
	ents, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range ents {
		d := "/sys/fs/cgroup/" + e.Name() + path
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if err := removeTree(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// Held returns the capabilities this process holds (effective and
// bounding): the most a container it starts can be given.
func Held() ([]string, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("read own capabilities: %w", err)
	}
	var eff, bnd uint64
	var seen int
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch k {
		case "CapEff", "CapBnd":
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("read own capabilities: %s: %w", k, err)
			}
			if k == "CapEff" {
				eff = n
			} else {
				bnd = n
			}
			seen++
		}
	}
	if seen != 2 {
		return nil, errors.New("read own capabilities: no CapEff/CapBnd in /proc/self/status")
	}
	return FromMask(eff & bnd), nil
}

// Options are the settings shared by LearnImage, LearnService and
// ExplainImage.
type Options struct {
	Vessel   string        // the vessel binary (os.Executable for the CLI)
	Global   []string      // global vessel flags, e.g. --root DIR
	Duration time.Duration // stop each run after this long (0: wait for the workload to exit)
	Offer    []string      // capabilities the first run gets (nil: every one this process holds)
	NoTrace  bool          // do not trace: the drop-one search alone
	Output   io.Writer     // the workload's output (nil: discarded)
}

func (o Options) runner(image string, args, flags []string) (*VesselRunner, []string, string, error) {
	if os.Geteuid() != 0 {
		return nil, nil, "", errors.New("learning capabilities needs root (BPF tracing, cgroups, containers with any capability): run it with sudo")
	}
	offer := o.Offer
	if offer == nil {
		held, err := Held()
		if err != nil {
			return nil, nil, "", err
		}
		offer = held
	}
	var r *VesselRunner
	noTrace := "--no-trace"
	if o.NoTrace {
		r = &VesselRunner{Vessel: o.Vessel, Image: image, Args: args}
	} else {
		r, noTrace = NewVesselRunner(o.Vessel, image, args)
	}
	r.Global, r.RunFlags, r.Duration, r.Output = o.Global, flags, o.Duration, o.Output
	return r, offer, noTrace, nil
}

// LearnImage learns the capabilities of IMAGE running args (empty: its
// own command), started with the extra vessel run flags.
func LearnImage(ctx context.Context, o Options, image string, args, flags []string) (*Report, error) {
	r, offer, noTrace, err := o.runner(image, args, flags)
	if err != nil {
		return nil, err
	}
	return Learn(ctx, r, offer, noTrace)
}

// LearnService learns the capabilities of service name in system.yaml
// text src (see ServiceRun), its volumes fresh temporary directories.
func LearnService(ctx context.Context, o Options, src []byte, name string) (rep *Report, err error) {
	sys, err := manifest.ParseSystem("system.yaml", src)
	if err != nil {
		return nil, err
	}
	var svc *manifest.ServiceSpec
	for i := range sys.Services {
		if sys.Services[i].Name == name {
			svc = &sys.Services[i]
		}
	}
	if svc == nil {
		var have []string
		for _, s := range sys.Services {
			have = append(have, s.Name)
		}
		return nil, fmt.Errorf("system.yaml has no service %q (it has %s)", name, strings.Join(have, ", "))
	}
	vols, err := os.MkdirTemp("", "vessel-caps-volumes-")
	if err != nil {
		return nil, fmt.Errorf("volumes for learning: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(vols); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove learning volumes: %w", rerr))
		}
	}()
	for _, v := range Volumes(*svc) {
		if err := os.Mkdir(filepath.Join(vols, v), 0o755); err != nil {
			return nil, fmt.Errorf("volumes for learning: %w", err)
		}
	}
	image, args, flags, err := ServiceRun(*svc, vols)
	if err != nil {
		return nil, err
	}
	return LearnImage(ctx, o, image, args, flags)
}

// ExplainImage runs the workload once, traced, with every offered
// capability and returns the checks of capability c and the run.
func ExplainImage(ctx context.Context, o Options, image string, args []string, c string) ([]Check, Run, error) {
	c, err := Normalize(c)
	if err != nil {
		return nil, Run{}, err
	}
	o.NoTrace = false
	r, offer, noTrace, err := o.runner(image, args, nil)
	if err != nil {
		return nil, Run{}, err
	}
	if !r.Trace {
		return nil, Run{}, fmt.Errorf("explain needs capability tracing: %s", noTrace)
	}
	run, err := r.Run(ctx, offer)
	if err != nil {
		return nil, Run{}, err
	}
	return Explain(run, c), run, nil
}
