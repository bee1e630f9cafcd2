package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/userns"
)

func init() {
	addCommand(runCmd)
	addCommand(runtimeCmd)
}

// launcher finds a working OCI runtime (want "" picks one) and returns a
// container launcher over the run directory.
func (g *globals) launcher(cmd *cobra.Command, want string) (*container.Launcher, error) {
	rt, _, err := ociruntime.Detect(cmd.Context(), want, filepath.Join(g.runDir(), "runtime"))
	if err != nil {
		return nil, fmt.Errorf("%w (vessel runtime shows what was tried)", err)
	}
	return &container.Launcher{Mounts: g.mounter(), Runtime: rt}, nil
}

// enterUserNS puts an unprivileged caller in the user namespace vessel
// runs rootless in (package userns): it runs this command again there and
// reports its exit status. handled false means carry on: the caller is
// root, or already inside. The store and run directories are resolved
// here, outside, and handed to the child, which sees itself as root.
func (g *globals) enterUserNS(cmd *cobra.Command) (handled bool, err error) {
	if userns.Needed() {
		root, err := g.storeRoot()
		if err != nil {
			return true, err
		}
		run, err := userns.RunDir(cmd.ErrOrStderr())
		if err != nil {
			return true, err
		}
		os.Setenv("VESSEL_ROOT", root)
		os.Setenv("VESSEL_RUN", run)
	}
	run := g.runDir()
	handled, code, err := userns.Reexec(cmd.Context(), userns.Options{PrivateDirs: container.PrivateDirs(run)})
	if !handled || err != nil {
		return handled, err
	}
	if code != 0 {
		return true, exitError{code: code} // the child has said why
	}
	return true, nil
}

func runCmd(g *globals) *cobra.Command {
	var (
		cfg                  ociruntime.Config
		name, runtimeName    string
		arch                 string
		interactive, tty, rm bool
		whyDenied            bool
		entrypoint           string
		withInit             bool
		initPath             string
		stopTimeout          time.Duration
		volumes, securityOpt []string
	)
	c := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Run a command in a container on a fresh, verified root filesystem",
		Long: `Run a container from IMAGE. Its root filesystem is mounted fresh from the
image's verified layers with an empty writable layer on top, and thrown
away when the container exits: every run starts from exactly the image.
Only --volume directories persist.

The container runs through an OCI runtime (runc or crun, whichever works
here; --runtime picks one). By default it gets its own network namespace
with only loopback (--network host shares the host's), the runtime's usual
capability set for an unprivileged container (narrow or widen it with
--cap-drop and --cap-add), no_new_privs and a seccomp filter that denies
syscalls reaching un-namespaced kernel interfaces (keyrings, modules, the
clock, BPF, perf, new user namespaces...) unless the matching capability
is granted (--security-opt seccomp=unconfined turns it off;
--security-opt seccomp=PROFILE.json uses a profile in Docker's or the OCI
runtime spec's JSON format instead, such as moby's default.json; its
includes and excludes by capability, architecture and minKernel are
decided for this container and the running kernel, as podman does).

As with docker and podman, the container runs the image's entrypoint
followed by COMMAND, or by the image's cmd when no COMMAND is given; an
image without an entrypoint runs COMMAND itself. --entrypoint replaces the
entrypoint (and drops the image's cmd).

The container's exit code becomes vessel's (128+N when signal N killed
it; 127 when COMMAND is not found, 126 when it cannot be executed). The
first Ctrl-C (SIGINT) or SIGTERM is passed on to the container; if it has
not exited --stop-timeout later, or at a second Ctrl-C, it is killed and
vessel exits 130 (143 for SIGTERM). A process that is PID 1 of the container ignores
signals it has no handler for (a shell, busybox httpd): --init runs a tiny
init (catatonit, tini or dumb-init, statically linked) as PID 1 instead,
which passes signals on and reaps zombies, so the first Ctrl-C stops it. -it gives an interactive terminal.
Containers never outlive the command, so --rm is always in effect:
vessel ps --all lists them while they run, vessel stop NAME and vessel
kill NAME end them from another terminal.

Rootless: run as an unprivileged user listed in /etc/subuid and
/etc/subgid, vessel enters a user namespace where the user is root and
the subordinate ids are mapped from 1 up (as podman does), verifies each
layer in userspace, mounts it with squashfuse and stacks an overlay with
user xattrs. Run state goes to $XDG_RUNTIME_DIR/vessel (or
/tmp/vessel-run-UID). See docs/rootless.md.

An image for another architecture runs through a qemu-user emulator
registered with binfmt_misc (vessel binfmt install; docs/binfmt.md);
without one vessel refuses it and says how to register one. --arch picks
the platform from a multi-arch image and refuses an image for another.`,
		Example: `  vessel run demo:1 /bin/echo hello
  vessel run --name web app                       # the image's entrypoint and cmd
  vessel run --entrypoint /bin/cat app /www/index.html
  vessel run --init app                          # httpd stops at the first Ctrl-C
  vessel run -it demo:1 /bin/sh
  vessel run --network host -e PORT=8080 demo:1
  vessel run --read-only --cap-drop ALL --user 1000:1000 demo:1 id
  vessel run -v /srv/data:/data demo:1 ls /data
  vessel run --arch arm64 app uname -m           # aarch64, through qemu-user (vessel binfmt install)`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_ = rm
			if err := checkEmulationOutside(arch); err != nil {
				return err
			}
			if handled, err := g.enterUserNS(cmd); handled {
				return err
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			img, err := imageFor(s, args[0], arch)
			if err != nil {
				return err
			}
			if name == "" {
				b := make([]byte, 6)
				rand.Read(b)
				name = "run-" + hex.EncodeToString(b)
			}
			imgCfg := img.Config().Config
			var ep []string
			if cmd.Flags().Changed("entrypoint") {
				// As docker and podman: --entrypoint replaces the image's
				// entrypoint and drops its cmd; "" clears the entrypoint.
				imgCfg.Entrypoint, imgCfg.Cmd = nil, nil
				if ep, err = parseEntrypoint(entrypoint); err != nil {
					return err
				}
			}
			proc, err := ociruntime.FromImage(imgCfg, ociruntime.Overrides{
				Entrypoint: ep, Cmd: args[1:], Env: envFlags(cfg.Env), User: cfg.User, Cwd: cfg.Cwd,
			})
			if err != nil {
				return fmt.Errorf("run %s: %w (give a COMMAND)", args[0], err)
			}
			cfg.Args, cfg.Env, cfg.User, cfg.Cwd = proc.Args, proc.Env, proc.User, proc.Cwd
			for _, o := range securityOpt {
				switch o {
				case "seccomp=unconfined", "seccomp:unconfined":
					cfg.Unconfined = true
				case "no-new-privileges", "no-new-privileges:true", "no-new-privileges=true":
					// always on
				default:
					file, ok := strings.CutPrefix(o, "seccomp=")
					if !ok {
						file, ok = strings.CutPrefix(o, "seccomp:")
					}
					if !ok || file == "" {
						return usageError{fmt.Sprintf("--security-opt %q: vessel knows seccomp=unconfined, seccomp=PROFILE.json and no-new-privileges", o)}
					}
					b, err := bounded.ReadFile(file, ociruntime.MaxSeccompProfile)
					if err != nil {
						return fmt.Errorf("--security-opt seccomp: %w", err)
					}
					if _, err := ociruntime.ParseSeccompProfile(b, nil); err != nil {
						return fmt.Errorf("--security-opt seccomp=%s: %w", file, err)
					}
					cfg.SeccompProfile = b
				}
			}
			if withInit || initPath != "" {
				p, err := ociruntime.FindInit(initPath)
				if err != nil {
					return err
				}
				ociruntime.WithInit(&cfg, p)
			}
			for _, v := range volumes {
				b, err := parseVolume(v)
				if err != nil {
					return err
				}
				cfg.Mounts = append(cfg.Mounts, b)
			}
			stdio := ociruntime.Stdio{Stdout: os.Stdout, Stderr: os.Stderr}
			if interactive {
				stdio.Stdin = os.Stdin
			}
			if tty {
				if !ociruntime.IsTerminal(os.Stdin) {
					return usageError{"run -t: the input is not a terminal (drop -t, or run from a terminal)"}
				}
				cfg.Terminal = true
			}
			l, err := g.launcher(cmd, runtimeName)
			if err != nil {
				return err
			}
			// The next run from the same layers shares them (vessel down
			// takes warm mounts down; docs/run.md).
			l.Mounts.Warm = mount.DefaultWarm
			runCtx, abort := context.WithCancel(context.WithoutCancel(cmd.Context()))
			defer abort()
			var started atomic.Bool
			stopper := stopOnSignals(abort, &started, stopTimeout)
			defer stopper.close()
			finish, err := watchDenials(whyDenied, &cfg)
			if err != nil {
				return err
			}
			spec := container.Spec{ID: name, Image: img, Config: cfg, Started: func() { started.Store(true) }}
			code, err := l.Run(runCtx, spec, stdio)
			if ferr := finish(cmd.ErrOrStderr(), err != nil || code != 0); ferr != nil {
				err = errors.Join(err, ferr)
			}
			if sig, killed := stopper.result(); killed {
				if started.Load() {
					warnf(cmd.ErrOrStderr(), "note", "container %s did not exit on %v; killed it", name, sig)
				}
				return exitError{code: 128 + int(sig)}
			}
			if err != nil {
				return execExitCode(err)
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
	f := c.Flags()
	f.SetInterspersed(false) // flags after IMAGE belong to COMMAND
	f.StringVar(&name, "name", "", "container name (default run-RANDOM)")
	f.StringVar(&arch, "arch", "", "run the image for ARCH (arm64...): picked from a multi-arch image, refused if the image is for another; foreign ones need vessel binfmt install")
	f.StringVar(&entrypoint, "entrypoint", "", `replace the image's entrypoint (and its cmd): a path, or a JSON array; "" clears it`)
	f.BoolVar(&withInit, "init", false, "run a tiny init (catatonit, tini or dumb-init) as PID 1: it reaps zombies and passes signals on, so Ctrl-C and vessel stop work on any command")
	f.StringVar(&initPath, "init-path", "", "the static init binary for --init (default: catatonit, tini or dumb-init on PATH)")
	f.DurationVar(&stopTimeout, "stop-timeout", 10*time.Second, "after Ctrl-C or SIGTERM is passed on, how long to wait before killing the container")
	f.BoolVar(&rm, "rm", true, "remove the container when it exits (always; accepted for familiarity)")
	f.BoolVarP(&interactive, "interactive", "i", false, "connect stdin")
	f.BoolVarP(&tty, "tty", "t", false, "allocate a terminal (stdin must be one)")
	f.StringArrayVarP(&cfg.Env, "env", "e", nil, "set an environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cfg.User, "user", "u", "", "run as UID[:GID] or NAME[:GROUP] (default: the image's user)")
	f.StringVarP(&cfg.Cwd, "workdir", "w", "", "working directory inside the container")
	f.StringArrayVar(&cfg.CapAdd, "cap-add", nil, "add a capability, e.g. NET_ADMIN or ALL (repeatable)")
	f.StringArrayVar(&cfg.CapDrop, "cap-drop", nil, "drop a capability, e.g. NET_RAW or ALL (repeatable)")
	f.StringVar(&cfg.Network, "network", "none", "none (own namespace, loopback only) or host")
	f.BoolVar(&cfg.ReadOnly, "read-only", false, "mount the root filesystem read-only")
	f.StringArrayVarP(&volumes, "volume", "v", nil, "bind-mount HOST:CONTAINER[:ro] (repeatable)")
	f.StringVar(&runtimeName, "runtime", "", "OCI runtime: runc, crun or a path (default: the first that works)")
	f.StringArrayVar(&securityOpt, "security-opt", nil, "seccomp=unconfined: no syscall filter; seccomp=PROFILE.json: a profile in Docker's or the OCI JSON format")
	f.BoolVar(&whyDenied, "why-denied", false, "trace refused capability checks and name them if the container fails (root, cap_capable tracepoint)")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", "", "cgroup the container's cgroup is made in (default /vessel/...; vessel caps learn traces one it made)")
	return c
}

// envFlags turns -e values into KEY=VALUE entries: -e KEY passes the
// caller's value, as docker does.
func envFlags(flags []string) []string {
	var out []string
	for _, kv := range flags {
		if k, _, ok := strings.Cut(kv, "="); !ok {
			kv = k + "=" + os.Getenv(k)
		}
		out = append(out, kv)
	}
	return out
}

func parseVolume(v string) (ociruntime.Bind, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
		return ociruntime.Bind{}, usageError{fmt.Sprintf("--volume %q: want HOST:CONTAINER or HOST:CONTAINER:ro", v)}
	}
	src, err := filepath.Abs(parts[0])
	if err != nil {
		return ociruntime.Bind{}, err
	}
	if _, err := os.Stat(src); err != nil {
		return ociruntime.Bind{}, fmt.Errorf("--volume %s: %w", v, err)
	}
	if !filepath.IsAbs(parts[1]) {
		return ociruntime.Bind{}, usageError{fmt.Sprintf("--volume %q: the container path must be absolute", v)}
	}
	return ociruntime.Bind{Source: src, Target: parts[1], ReadOnly: len(parts) == 3 && parts[2] == "ro"}, nil
}

func runtimeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "runtime",
		Example: `  vessel runtime
  vessel runtime --json`,
		Short: "Show which OCI runtime vessel uses and why others were skipped",
		Long: `Probe the OCI runtimes vessel knows (runc, crun) by really creating and
deleting a throwaway container with each, and show which one vessel uses.
A runtime that fails is skipped with the runtime's own error. The result is
remembered until reboot (in the run directory).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if handled, err := g.enterUserNS(cmd); handled {
				return err // rootless: probe where vessel run would run
			}
			rt, skipped, err := ociruntime.Detect(cmd.Context(), "", filepath.Join(g.runDir(), "runtime"))
			if g.json {
				// camelCase and [] for none, as every --json document.
				type skip struct {
					Name   string `json:"name"`
					Reason string `json:"reason"`
				}
				sk := []skip{}
				for _, s := range skipped {
					sk = append(sk, skip{s.Name, s.Reason})
				}
				out := map[string]any{"skipped": sk}
				if err == nil {
					out["runtime"] = map[string]string{"name": rt.Name, "path": rt.Path, "stateRoot": rt.StateRoot}
				} else {
					out["error"] = err.Error()
				}
				if jerr := printJSON(cmd.OutOrStdout(), out); jerr != nil {
					return jerr
				}
				return err
			}
			w := cmd.OutOrStdout()
			printSkipped(w, skipped)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "using %s (%s)\n", rt.Name, rt.Path)
			return nil
		},
	}
}

func printSkipped(w io.Writer, skipped []ociruntime.Skipped) {
	for _, s := range skipped {
		fmt.Fprintf(w, "skipped %s: %s\n", s.Name, s.Reason)
	}
}
