package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/caps"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/supervise"
	"github.com/vesselos/vessel/internal/trust"
)

func init() {
	addCommand(upCmd)
	addCommand(psCmd)
	addCommand(logsCmd)
	addCommand(restartCmd)
	addCommand(downCmd)
}

func (g *globals) superviseDir() string { return filepath.Join(g.runDir(), "supervise") }

// detachedEnv marks the background copy of `vessel up --detach`.
const detachedEnv = "VESSEL_UP_DETACHED"

func upCmd(g *globals) *cobra.Command {
	var (
		tf          trustFlags
		detach      bool
		runtimeName string
		stopTimeout time.Duration
		logMax      int64
		whyDenied   bool
		noRecord    bool
	)
	c := &cobra.Command{
		Use:   "up [SIGNED] --ca CA.pem",
		Short: "Verify a signed system manifest and run every service it lists",
		Long: `up verifies the signed system manifest (every check of vessel manifest
verify, with the images checked in the store and no older version than
one accepted before), then starts every service and keeps it
running until SIGTERM, Ctrl-C or vessel down. Without SIGNED it runs the
system vessel install recorded as current.

Each service runs as a container whose root filesystem is mounted fresh
from its verified image at every start: a file written to the root
filesystem is gone after a restart, a file in a declared volume is kept
(volumes live in <root>/volumes/SERVICE/NAME). Services restart per their
policy (always, on-failure, never) with exponential backoff (100ms doubling
to 30s; reset after 10s of running). Output goes to one log per service
(vessel logs), rotated past --log-max. Stopping sends SIGTERM, waits --stop-timeout, then SIGKILL,
and unmounts everything.

A vessel up that crashed leaves containers and mounts behind; the next up
(or vessel down) removes them first. --detach runs the supervisor in the
background and returns once every service has been started.

--why-denied traces the capability checks each service is refused (BPF,
only refused checks leave the kernel; about 50 ms per start): when a
service fails, its log (vessel logs) names the capabilities it was
refused and the capabilities: line to give it.`,
		Example: `  vessel up manifest.signed --ca keys/manifest-ca.pem
  vessel up manifest.signed --ca manifest-ca.pem --product-id 0f8fad5b-d9cb-469f-a165-70867728950e --detach
  vessel up manifest.signed --ca keys/manifest-ca.pem --why-denied --detach
  vessel ps
  vessel logs web -f
  vessel restart web
  vessel down`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := tf.options("up")
			if err != nil {
				return err
			}
			root, err := g.storeRoot()
			if err != nil {
				return err
			}
			if detach && os.Getenv(detachedEnv) == "" {
				info, logPath, err := supervise.Detach(cmd.Context(), g.superviseDir(), os.Args, append(os.Environ(), detachedEnv+"=1"))
				if err != nil {
					return fmt.Errorf("up: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "up: product %s version %d, %d services, supervisor pid %d (log %s)\n",
					info.Product, info.Version, len(info.Services), info.Owner.Pid, logPath)
				return nil
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			signedPath := ""
			if len(args) == 1 {
				signedPath = args[0]
			}
			vm, err := supervise.VerifyForUp(root, s, signedPath, opts)
			if errors.Is(err, store.ErrNotFound) && signedPath == "" {
				return fmt.Errorf("up: give a signed manifest, or install one first: %w", err)
			}
			if err != nil {
				return fmt.Errorf("up: %w", err)
			}
			l, err := g.launcher(cmd, runtimeName)
			if err != nil {
				return err
			}
			alloc, err := g.usernsAllocator()
			if err != nil {
				return err
			}
			sup := &supervise.Supervisor{
				UserNS: alloc,
				Dir:    g.superviseDir(), Launcher: l, Store: s,
				Volumes: filepath.Join(root, "volumes"), Log: cmd.ErrOrStderr(), StopTimeout: stopTimeout,
				Versions: trust.OpenVersions(root),
				LogMax:   logMax,
			}
			if noRecord {
				sup.Versions = nil // a trial boot: vessel update check records it
			}
			if whyDenied {
				if err := caps.CanTrace(); err != nil {
					return fmt.Errorf("up: --why-denied: %w", err)
				}
				sup.Watch = watchService
			}
			if err := sup.Up(cmd.Context(), vm); err != nil {
				return err
			}
			// Ctrl-C or SIGTERM stopped the services (with SIGTERM, then
			// SIGKILL after --stop-timeout): exit 130 or 143, as shells expect.
			return cmd.Context().Err()
		},
	}
	tf.add(c.Flags())
	c.Flags().BoolVarP(&detach, "detach", "d", false, "run in the background; return once the services are started")
	c.Flags().StringVar(&runtimeName, "runtime", "", "OCI runtime: runc, crun or a path (default: the first that works)")
	c.Flags().DurationVar(&stopTimeout, "stop-timeout", 10*time.Second, "time between SIGTERM and SIGKILL when stopping a service")
	c.Flags().BoolVar(&noRecord, "no-record", false, "do not record the manifest's version as accepted once the services start (a trial boot: vessel update check does)")
	c.Flags().BoolVar(&whyDenied, "why-denied", false, "when a service fails, name the capabilities it was refused in its log (BPF tracing)")
	c.Flags().Int64Var(&logMax, "log-max", supervise.DefaultLogMax, "rotate a service's log past this many bytes, keeping one older part")
	return c
}

func psCmd(g *globals) *cobra.Command {
	var (
		all bool
		lf  listFlags
	)
	c := &cobra.Command{
		Use:   "ps [--all]",
		Short: "Show the services vessel up runs: state, restarts, image, uptime (--all: every container)",
		Long: `Show the services of the running vessel up: state, restarts, uptime and
image. --all also lists every container a vessel process runs: vessel run
containers, service containers and build steps (vessel stop and vessel
kill take their names).`,
		Example: `  vessel ps
  vessel ps --all
  vessel ps --json
  vessel ps -a -q                       # names, one per line: vessel stop $(vessel ps -a -q)
  vessel ps --format '{{.Name}} {{.State}}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var cs []container.Info
			if all {
				var err error
				if cs, err = container.List(cmd.Context(), g.runDir()); err != nil {
					return err
				}
			}
			dir := g.superviseDir()
			info, rerr := supervise.Running(dir)
			if rerr != nil && !errors.Is(rerr, supervise.ErrNotRunning) {
				return rerr
			}
			var sts []supervise.Status
			if info != nil {
				var err error
				if sts, err = supervise.Services(dir); err != nil {
					return err
				}
			}
			if g.json || lf.format == "json" {
				if sts == nil {
					sts = []supervise.Status{}
				}
				out := map[string]any{"supervisor": info, "services": sts}
				if all {
					out["containers"] = cs
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			if info == nil {
				if all {
					return lf.print(w, false, containerTable(cs))
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%v (vessel ps --all lists vessel run containers too)\n", rerr)
				return nil
			}
			if !lf.quiet && lf.format == "" && !lf.noHeading {
				fmt.Fprintf(w, "product %s version %d, supervisor pid %d, up %s\n",
					info.Product, info.Version, info.Owner.Pid, time.Since(info.Started).Round(time.Second))
			}
			ids := make([]string, len(sts))
			for i, s := range sts {
				ids[i] = s.Name
			}
			err := lf.print(w, false, listTable{rows: sts, ids: ids,
				header: "NAME\tSTATE\tRESTARTS\tUPTIME\tIMAGE\tDIGEST",
				line: func(i int) string {
					s := sts[i]
					up := "-"
					if s.State == supervise.StateRunning {
						up = time.Since(s.Started).Round(time.Second).String()
					}
					state := s.State
					if s.ExitCode != nil && s.State != supervise.StateRunning {
						state = fmt.Sprintf("%s (%d)", s.State, *s.ExitCode)
					}
					return fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%s", s.Name, state, s.Restarts, up, s.Image, shortDigest(s.Digest))
				}})
			if err != nil || !all {
				return err
			}
			if !lf.quiet && lf.format == "" {
				fmt.Fprintln(w)
			}
			return lf.print(w, false, containerTable(cs))
		},
	}
	lf.add(c.Flags(), "service names (and with --all container names)")
	c.Flags().BoolVarP(&all, "all", "a", false, "also list every running container (vessel run, services, builds)")
	return c
}

func logsCmd(g *globals) *cobra.Command {
	var (
		opts         supervise.LogOptions
		since, until string
		timestamps   bool
	)
	c := &cobra.Command{
		Use: "logs [--tail N] [--since T] [-f] NAME",
		Example: `  vessel logs web
  vessel logs --tail 20 -f web
  vessel logs --since 10m --timestamps web
  vessel logs --since 2026-12-02T01:00:00Z --until 2026-12-02T02:00:00Z web
  vessel logs --json web | jq -r 'select(.stream == "stderr") | .line'`,
		Short: "Print a service's output (-f: keep following)",
		Long: `Print what service NAME wrote to stdout and stderr, across restarts, with
vessel's start and exit lines ("[vessel TIME] ...") between runs. Each log
is capped (10 MiB): past it the log is rotated, keeping one older part,
which is printed first.

Every line is stored with the time it was written, as podman does.
--since and --until print only lines written from or up to a time: a
duration back from now (10m, 1h30m), an RFC 3339 time or date
(2026-12-02T01:00:00Z, 2026-12-02) or Unix seconds. Logs written by
vessel before it stored times are printed, without a time, only when
neither is given. --timestamps puts each line's time (RFC 3339, with
nanoseconds) before it. --tail N prints only the last N lines (that
match); -f keeps printing new output until Ctrl-C or until the supervisor
stops. --json prints one JSON object per line: {"time", "stream" (stdout,
stderr or vessel), "line"}, and "partial": true for output not ended by
a newline.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			now := time.Now()
			var err error
			if opts.Since, err = parseTimeFlag("since", since, now); err != nil {
				return err
			}
			if opts.Until, err = parseTimeFlag("until", until, now); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			emit := func(e supervise.LogEntry) error {
				_, err := io.WriteString(w, logLine(e, timestamps))
				return err
			}
			if g.json {
				events := json.NewEncoder(w)
				emit = func(e supervise.LogEntry) error { return events.Encode(jsonValue(e)) }
			}
			return supervise.ReadLog(cmd.Context(), g.superviseDir(), args[0], opts, emit)
		},
	}
	c.Flags().BoolVarP(&opts.Follow, "follow", "f", false, "keep printing new output")
	c.Flags().IntVarP(&opts.Tail, "tail", "n", -1, "print only the last N lines first (-1: all)")
	c.Flags().StringVar(&since, "since", "", "only lines written since `TIME` (10m, 2026-12-02T01:00:00Z, a date, Unix seconds)")
	c.Flags().StringVar(&until, "until", "", "only lines written up to `TIME` (as --since)")
	c.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "print each line's time before it")
	return c
}

// logLine is one log entry as text: vessel's own lines marked as such,
// with --timestamps the time first; output not ended by a newline is
// printed without one.
func logLine(e supervise.LogEntry, timestamps bool) string {
	line := e.Line
	if e.Stream == supervise.StreamVessel {
		line = "[vessel " + e.Time.Local().Format(time.RFC3339) + "] " + line
	}
	if timestamps && !e.Time.IsZero() {
		line = e.Time.Local().Format(time.RFC3339Nano) + " " + line
	}
	if !e.Partial {
		line += "\n"
	}
	return line
}

// parseTimeFlag reads --since/--until as podman does: a duration back from
// now, an RFC 3339 time (or one without a zone, or a date, in local time),
// or Unix seconds (with a fraction).
func parseTimeFlag(name, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02Z07:00"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	if sec, frac, _ := strings.Cut(v, "."); sec != "" {
		if s, err := strconv.ParseInt(sec, 10, 64); err == nil {
			ns := int64(0)
			if frac != "" {
				f, err := strconv.ParseFloat("0."+frac, 64)
				if err != nil {
					return time.Time{}, usageError{fmt.Sprintf("--%s %q: not a time", name, v)}
				}
				ns = int64(f * 1e9)
			}
			return time.Unix(s, ns), nil
		}
	}
	return time.Time{}, usageError{fmt.Sprintf("--%s %q: not a time: give a duration (10m), an RFC 3339 time (2026-12-02T01:00:00Z), a date (2026-12-02) or Unix seconds", name, v)}
}

func restartCmd(g *globals) *cobra.Command {
	var wait time.Duration
	c := &cobra.Command{
		Use: "restart NAME",
		Example: `  vessel restart web
  vessel restart --wait 1m web`,
		Short: "Restart a service on a fresh root filesystem",
		Long: `Stop service NAME gracefully and start it again from its verified image
with a fresh writable layer (volumes are kept). Waits until it runs again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := g.superviseDir()
			before, err := serviceStatus(dir, args[0])
			if err != nil {
				return err
			}
			if err := supervise.Restart(dir, args[0]); err != nil {
				return fmt.Errorf("restart %s: %w", args[0], err)
			}
			deadline := time.Now().Add(wait)
			for time.Now().Before(deadline) {
				st, err := serviceStatus(dir, args[0])
				if err != nil {
					return err
				}
				if st.Restarts > before.Restarts && st.State == supervise.StateRunning {
					fmt.Fprintf(cmd.OutOrStdout(), "restarted %s (restart %d)\n", st.Name, st.Restarts)
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
			return fmt.Errorf("restart %s: requested, but not running again after %s (vessel ps, vessel logs %s)", args[0], wait, args[0])
		},
	}
	c.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the service to run again")
	return c
}

func serviceStatus(dir, name string) (supervise.Status, error) {
	sts, err := supervise.Services(dir)
	if err != nil {
		return supervise.Status{}, err
	}
	for _, s := range sts {
		if s.Name == name {
			return s, nil
		}
	}
	if _, err := supervise.Running(dir); err != nil {
		return supervise.Status{}, err
	}
	return supervise.Status{}, fmt.Errorf("no service %q (vessel ps lists the services)", name)
}

func downCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use: "down",
		Example: `  vessel down
  vessel down --json`,
		Short: "Stop every service and the supervisor, and unmount everything",
		Long: `Ask the running vessel up to stop: every service gets SIGTERM, then
SIGKILL after its stop timeout, and every mount is undone. Returns when the
supervisor has exited. With no supervisor running, removes whatever a
crashed one left behind (containers, mounts, state files).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := g.superviseDir()
			info, _ := supervise.Running(dir)
			launcher, err := g.launcher(cmd, "")
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+5*time.Second)
			defer cancel()
			cleaned, err := supervise.Down(ctx, dir, launcher, timeout)
			if err != nil {
				return fmt.Errorf("down: %w", err)
			}
			w := cmd.OutOrStdout()
			switch {
			case info != nil:
				fmt.Fprintf(w, "stopped product %s version %d (%d services)\n", info.Product, info.Version, len(info.Services))
			case len(cleaned) > 0:
				fmt.Fprintf(w, "no supervisor was running; cleaned up %s\n", strings.Join(cleaned, ", "))
			default:
				fmt.Fprintln(w, "nothing was running")
			}
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the supervisor to stop")
	return c
}
