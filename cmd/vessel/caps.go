package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/caps"
	"github.com/vesselos/vessel/internal/ociruntime"
)

func init() { addCommand(capsCmd) }

func capsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "caps",
		Short: "Learn the smallest set of capabilities a workload needs, and why",
		Long: `Find which Linux capabilities a container really needs instead of
guessing. vessel caps learn runs the workload (through vessel run) with
every capability vessel holds while a BPF program on the kernel's
capability:cap_capable tracepoint records each capability check of the
container's cgroup, with its kernel stack. Checks the kernel makes only to
pick a policy (CAP_SYS_ADMIN on every mmap, brk and execve) are recognised
by their stack and ignored. The capabilities that were granted are an upper
bound: each is then dropped in turn, and kept only if the run without it
ends differently (exit code, or stopping before --duration) or is refused
a capability check.

Without the tracepoint (Linux before 6.x, or no BPF permission) the same
drop-one search starts from every capability: slower, and the output says
so. See docs/caps.md.

The learning runs really do what the workload does, with every capability:
a workload that sets the clock sets the host's clock. Learn on a test
machine.`,
	}
	c.AddCommand(capsLearnCmd(g), capsExplainCmd(g))
	return c
}

type capsFlags struct {
	duration time.Duration
	offer    []string
	noTrace  bool
	output   bool
}

func (f *capsFlags) add(c *cobra.Command) {
	c.Flags().DurationVar(&f.duration, "duration", 0, "stop each run after this long (default: wait until the workload exits; 10s for --service)")
	c.Flags().StringSliceVar(&f.offer, "offer", nil, "capabilities the first run gets (default: every one vessel holds)")
	c.Flags().BoolVar(&f.output, "output", false, "show the workload's output (stderr)")
}

func (f *capsFlags) options(g *globals, cmd *cobra.Command) (caps.Options, error) {
	exe, err := caps.VesselBinary()
	if err != nil {
		return caps.Options{}, err
	}
	o := caps.Options{Vessel: exe, Duration: f.duration, NoTrace: f.noTrace}
	if g.root != "" {
		o.Global = []string{"--root", g.root}
	}
	for _, c := range f.offer {
		n, err := caps.Normalize(c)
		if err != nil {
			return o, usageError{fmt.Sprintf("--offer: %v", err)}
		}
		o.Offer = append(o.Offer, n)
	}
	if f.offer != nil && o.Offer == nil {
		o.Offer = []string{}
	}
	if f.output {
		o.Output = cmd.ErrOrStderr()
	}
	return o, nil
}

func capsLearnCmd(g *globals) *cobra.Command {
	var (
		f                 capsFlags
		manifestPath, svc string
		write             bool
	)
	c := &cobra.Command{
		Use:   "learn IMAGE [-- COMMAND [ARG...]] | --manifest system.yaml --service NAME [--write]",
		Short: "Run a workload and print the smallest set of capabilities it needs",
		Long: `Run IMAGE (with COMMAND, or the image's own) under capability tracing,
then again with one capability dropped at a time, and print the smallest
set that keeps the outcome, each capability with the syscalls and kernel
paths that needed it. A service that runs until stopped needs --duration:
each run is stopped after it, and "still running" is its outcome.

With --manifest and --service, the service's image, command, environment,
user, network and read-only root are used (its volumes are fresh
temporary directories) and --duration defaults to 10s; --write then sets
the service's capabilities: list in system.yaml, keeping every other line.

Root only: tracing needs BPF and the runs need vessel run as root.`,
		Example: `  vessel caps learn bb:1 -- /bin/chown 1:1 /etc/motd
  vessel caps learn --duration 5s web:1
  vessel caps learn --json bb:1 -- /bin/ping -c1 127.0.0.1
  vessel caps learn --manifest system.yaml --service web --write`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options(g, cmd)
			if err != nil {
				return err
			}
			var rep *caps.Report
			switch {
			case manifestPath != "" || svc != "":
				if manifestPath == "" || svc == "" || len(args) > 0 {
					return usageError{"caps learn: --manifest and --service go together, without IMAGE"}
				}
				src, err := os.ReadFile(manifestPath)
				if err != nil {
					return err
				}
				if o.Duration == 0 {
					o.Duration = 10 * time.Second
				}
				rep, err = caps.LearnService(cmd.Context(), o, src, svc)
				if err != nil {
					return err
				}
				if write {
					if err := caps.WriteServiceCaps(manifestPath, src, svc, rep.Names()); err != nil {
						return err
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "vessel: wrote the capabilities of %s into %s\n", svc, manifestPath)
				}
			default:
				if write {
					return usageError{"caps learn: --write needs --manifest and --service"}
				}
				if len(args) == 0 {
					return usageError{"caps learn: give IMAGE, or --manifest and --service"}
				}
				rep, err = caps.LearnImage(cmd.Context(), o, args[0], args[1:], nil)
				if err != nil {
					return err
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), rep)
			}
			printReport(cmd.OutOrStdout(), rep)
			return nil
		},
	}
	f.add(c)
	c.Flags().BoolVar(&f.noTrace, "no-trace", false, "do not trace: the drop-one search over every offered capability alone")
	c.Flags().StringVar(&manifestPath, "manifest", "", "system.yaml to take the service from")
	c.Flags().StringVar(&svc, "service", "", "service name in --manifest")
	c.Flags().BoolVar(&write, "write", false, "write the learned set into the service's capabilities: in --manifest")
	return c
}

func printReport(w io.Writer, r *caps.Report) {
	how := r.Method
	if r.NoTrace != "" {
		how += " (no tracing: " + r.NoTrace + ")"
	}
	fmt.Fprintf(w, "method: %s; %d runs in %s", how, r.Runs, time.Duration(r.Elapsed).Round(time.Millisecond))
	if r.Method == caps.MethodTrace {
		fmt.Fprintf(w, "; %d no-audit probes ignored", r.Probes)
	}
	fmt.Fprintf(w, "\noutcome to keep: %s\n", r.Baseline.Outcome())
	if r.Note != "" {
		fmt.Fprintf(w, "note: %s\n", r.Note)
	}
	if r.Lost > 0 {
		fmt.Fprintf(w, "note: %d trace records lost (ring buffer full)\n", r.Lost)
	}
	if len(r.Caps) == 0 {
		fmt.Fprintln(w, "needs no capabilities")
	}
	for _, n := range r.Caps {
		fmt.Fprintf(w, "%s: %s\n", n.Cap, n.About)
		for _, p := range n.Paths {
			fmt.Fprintf(w, "  used by %s\n", p)
		}
		if n.Without != "" {
			fmt.Fprintf(w, "  without it: %s\n", n.Without)
		}
	}
	flags := []string{"--cap-drop ALL"}
	for _, n := range r.Caps {
		flags = append(flags, "--cap-add "+caps.Short(n.Cap))
	}
	fmt.Fprintf(w, "run it with: vessel run %s ...\n", strings.Join(flags, " "))
}

func capsExplainCmd(g *globals) *cobra.Command {
	var f capsFlags
	c := &cobra.Command{
		Use:   "explain IMAGE CAP [-- COMMAND [ARG...]]",
		Short: "Show which syscalls and kernel paths checked one capability",
		Long: `Run IMAGE once under capability tracing with every capability vessel
holds and list each check of CAP: granted, denied, or a no-audit probe
(which learn ignores), with the syscall, the kernel path from the syscall
to the check, the command that made it and how often. Needs the
capability:cap_capable tracepoint.`,
		Example: `  vessel caps explain bb:1 CHOWN -- /bin/chown 1:1 /etc/motd
  vessel caps explain --json bb:1 SYS_ADMIN -- /bin/true`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options(g, cmd)
			if err != nil {
				return err
			}
			checks, run, err := caps.ExplainImage(cmd.Context(), o, args[0], args[2:], args[1])
			if err != nil {
				return err
			}
			if g.json {
				if checks == nil {
					checks = []caps.Check{}
				}
				return printJSON(cmd.OutOrStdout(), map[string]any{"outcome": run, "checks": checks})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "outcome: %s\n", run.Outcome())
			if len(checks) == 0 {
				fmt.Fprintf(w, "no checks of %s\n", args[1])
			}
			for _, k := range checks {
				sc := k.Syscall
				if sc == "" {
					sc = "(no syscall)"
				}
				fmt.Fprintf(w, "%-7s %s %dx by %s: %s: %s\n", k.Class, k.Cap, k.Count, k.Comm, sc, strings.Join(k.Path, " > "))
			}
			return nil
		},
	}
	f.add(c)
	return c
}

// watchDenials, when on, places the container under a cgroup traced for
// refused capability checks (vessel run --why-denied); finish prints a
// note naming them when the run failed.
func watchDenials(on bool, cfg *ociruntime.Config) (finish func(w io.Writer, failed bool) error, err error) {
	if !on {
		return func(io.Writer, bool) error { return nil }, nil
	}
	watch, err := caps.NewWatch()
	if err != nil {
		return nil, fmt.Errorf("--why-denied: %w", err)
	}
	cfg.CgroupParent = watch.Parent()
	return func(w io.Writer, failed bool) error {
		refused, err := watch.Stop(failed)
		if h := caps.Hint(refused); h != "" {
			fmt.Fprintf(w, "vessel: note: %s\n", h)
		}
		return err
	}, nil
}

// watchService is supervise.Supervisor.Watch for vessel up --why-denied:
// each run of a service is placed under a cgroup traced for refused
// capability checks, and a failed run's log names them.
func watchService(cfg *ociruntime.Config) (func(failed bool) (string, error), error) {
	watch, err := caps.NewWatch()
	if err != nil {
		return nil, err
	}
	cfg.CgroupParent = watch.Parent()
	have := cfg.Capabilities
	return func(failed bool) (string, error) {
		refused, err := watch.Stop(failed)
		return caps.ServiceHint(refused, have), err
	}, nil
}
