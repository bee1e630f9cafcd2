// Package supervise runs the services of a verified system manifest and
// keeps them running. Every (re)start of a service gets a fresh root
// filesystem mounted from its verified image (through package container);
// only declared volumes persist. Services restart per their policy with
// exponential backoff, log to one file each, and stop gracefully (SIGTERM,
// a timeout, SIGKILL) on SIGTERM to the supervisor or `vessel down`.
//
// State lives in a per-boot directory (normally /run/vessel/supervise):
// supervisor.json (who is running which manifest), services/NAME.json
// (what `vessel ps` shows), logs/NAME.log and control.sock (restart and
// down requests). A supervisor that crashed leaves containers and mounts
// behind; the next Up, or Down, removes them first (Recover).
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/proc"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/userns"
)

// Supervisor runs the services of one manifest.
type Supervisor struct {
	Dir      string // state directory
	Launcher *container.Launcher
	Store    *store.Store
	Volumes  string    // named volumes live in Volumes/SERVICE/NAME
	Log      io.Writer // supervisor messages (nil: discarded)

	StopTimeout time.Duration // SIGTERM to SIGKILL (default 10s)
	MinBackoff  time.Duration // first restart delay (default 100ms), doubled per failure
	MaxBackoff  time.Duration // (default 30s)
	ResetAfter  time.Duration // a run this long resets the backoff (default 10s)
	// LogMax caps each service's log: past it the log is rotated, keeping
	// one older part (default DefaultLogMax; negative: no cap).
	LogMax int64

	// Versions, when set, records the manifest's version as accepted once
	// every service has started (its container ran); until then going back
	// to the previous version is no rollback. If recording fails (a higher
	// version was accepted meanwhile), Up stops the services.
	Versions *trust.Versions

	// UserNS allocates the id ranges of services with a userns key (see
	// docs/userns.md). Nil: such services are refused. Every Up syncs the
	// record with the manifest: ranges of services that left it are freed.
	UserNS *userns.Allocator

	// Watch, when set, is called before each start of a service's
	// container with a copy of its config, which it may change (vessel up
	// --why-denied places the container under a cgroup traced for refused
	// capability checks). The finish function it returns is called once
	// the run has ended, with whether the service failed (exited non-zero
	// or could not run, not stopped by vessel), and returns a note for the
	// service's log ("" for none). An error from Watch is logged and the
	// service runs unwatched.
	Watch func(cfg *ociruntime.Config) (finish func(failed bool) (note string, err error), err error)
}

// IDPrefix starts the container id of every service.
const IDPrefix = "svc-"

type service struct {
	def     manifest.Service
	img     *mount.Image
	cfg     ociruntime.Config
	binds   []ociruntime.Bind
	restart chan struct{}

	started     chan<- struct{} // told once, when the container first ran
	startedOnce sync.Once

	mu sync.Mutex
	st Status
}

// markStarted tells Up that the service's container ran (it was running,
// or it exited by itself, not failing to start).
func (sv *service) markStarted() {
	sv.startedOnce.Do(func() {
		if sv.started != nil {
			sv.started <- struct{}{}
		}
	})
}

func (s *Supervisor) logf(format string, args ...any) {
	if s.Log != nil {
		fmt.Fprintf(s.Log, "%s "+format+"\n", append([]any{time.Now().Format(time.RFC3339)}, args...)...)
	}
}

func (s *Supervisor) defaults() {
	if s.StopTimeout == 0 {
		s.StopTimeout = 10 * time.Second
	}
	if s.MinBackoff == 0 {
		s.MinBackoff = 100 * time.Millisecond
	}
	if s.MaxBackoff == 0 {
		s.MaxBackoff = 30 * time.Second
	}
	if s.ResetAfter == 0 {
		s.ResetAfter = 10 * time.Second
	}
	if s.LogMax == 0 {
		s.LogMax = DefaultLogMax
	}
}

// Lock takes the supervisor lock of dir, held while a supervisor runs. It
// fails with a message naming the running supervisor if there is one.
func Lock(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "supervisor.lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if info, rerr := Running(dir); rerr == nil {
			return nil, fmt.Errorf("vessel up is already running (pid %d, product %s version %d); stop it with vessel down", info.Owner.Pid, info.Product, info.Version)
		}
		return nil, fmt.Errorf("another vessel is starting or stopping services in %s; try again", dir)
	}
	return func() { f.Close() }, nil
}

// Recover removes what a supervisor that died left behind: its containers
// (killed and deleted), their mounts and its state files; and what other
// vessel processes that died left (container.Launcher.Recover). The caller
// holds Lock. It returns a line per thing removed.
func Recover(ctx context.Context, dir string, l *container.Launcher) ([]string, error) {
	done, err := l.Recover(ctx)
	for _, p := range []string{supervisorFile(dir), controlSocket(dir)} {
		if rerr := os.Remove(p); rerr == nil {
			done = append(done, "stale "+filepath.Base(p))
		}
	}
	return done, err
}

// Up verifies nothing itself: it takes a manifest that passed trust.Verify,
// resolves every service image in the store (digest-checked), cleans up
// after a crashed predecessor, starts every service and keeps them running
// until ctx is cancelled or Down is requested. Then it stops them all and
// returns once everything is unmounted.
func (s *Supervisor) Up(ctx context.Context, vm *trust.VerifiedManifest) error {
	s.defaults()
	unlock, err := Lock(s.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	if removed, err := Recover(ctx, s.Dir, s.Launcher); err != nil {
		return fmt.Errorf("clean up after the previous vessel up: %w", err)
	} else if len(removed) > 0 {
		s.logf("cleaned up after a previous supervisor: %v", removed)
	}
	m := vm.Manifest()
	ranges, err := s.syncUserNS(vm.ProductID(), m)
	if err != nil {
		return err
	}
	services, err := s.prepare(vm, m, ranges)
	if err != nil {
		return err
	}
	for _, d := range []string{servicesDir(s.Dir), filepath.Join(s.Dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	old, _ := filepath.Glob(filepath.Join(servicesDir(s.Dir), "*.json"))
	for _, p := range old {
		os.Remove(p)
	}
	info := Info{Owner: proc.Self(), Product: vm.ProductID(), Version: vm.Version(), Manifest: vm.Digest().String(), Started: time.Now().UTC()}
	for _, sv := range services {
		info.Services = append(info.Services, sv.def.Name)
	}
	if err := writeJSON(supervisorFile(s.Dir), info); err != nil {
		return err
	}
	defer os.Remove(supervisorFile(s.Dir))

	ctx, down := context.WithCancel(ctx)
	defer down()
	stopControl, err := s.serveControl(ctx, services, down)
	if err != nil {
		return err
	}
	defer stopControl()

	s.logf("up: product %s version %d (%s), %d services", info.Product, info.Version, info.Manifest, len(services))
	started := make(chan struct{}, len(services))
	for _, sv := range services {
		sv.started = started
	}
	var wg sync.WaitGroup
	if s.Versions != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range services {
				select {
				case <-started:
				case <-ctx.Done():
					return
				}
			}
			if err := s.Versions.Record(vm); err != nil {
				s.logf("recording version %d as accepted: %v; stopping", info.Version, err)
				down()
				return
			}
			s.logf("accepted: every service started, version %d recorded", info.Version)
		}()
	}
	for _, sv := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, sv)
		}()
	}
	wg.Wait()
	s.logf("down: every service stopped and unmounted")
	return nil
}

// syncUserNS brings the id range record in line with the manifest and
// returns the range of each service that has one.
func (s *Supervisor) syncUserNS(product string, m *manifest.Manifest) (map[string]userns.Assignment, error) {
	var wants []userns.Want
	for _, def := range m.Services {
		if def.UserNS != "" {
			wants = append(wants, userns.Want{Service: def.Name, Mode: def.UserNS})
		}
	}
	if s.UserNS == nil {
		if len(wants) > 0 {
			return nil, fmt.Errorf("service %s: userns %s: this supervisor allocates no user namespaces", wants[0].Service, wants[0].Mode)
		}
		return nil, nil
	}
	if len(wants) > 0 && ociruntime.InUserNS() {
		return nil, fmt.Errorf("service %s: userns %s needs vessel up running as root, not rootless (a rootless vessel has only its own subordinate ids)", wants[0].Service, wants[0].Mode)
	}
	got, freed, err := s.UserNS.Sync(product, wants)
	if err != nil {
		return nil, fmt.Errorf("user namespaces: %w", err)
	}
	for _, f := range freed {
		s.logf("user namespaces: freed uids %d-%d of %s (no longer in the manifest)", f.UID.Start, f.UID.Start+f.UID.Count-1, f.Owner)
	}
	return got, nil
}

// prepare resolves images and turns each service into a container config.
func (s *Supervisor) prepare(vm *trust.VerifiedManifest, m *manifest.Manifest, ranges map[string]userns.Assignment) ([]*service, error) {
	var out []*service
	for _, def := range m.Services {
		if len(def.Ports) > 0 {
			return nil, fmt.Errorf("service %s: publishing ports (network private) is not implemented yet; use network: host", def.Name)
		}
		img, err := mount.SystemImage(s.Store, vm, def.Image.Digest)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w (pull it or create it first)", def.Name, err)
		}
		cfg, err := Config(def, img.Config().Config)
		if err != nil {
			return nil, err
		}
		as, mapped := ranges[def.Name]
		if mapped {
			cfg.UIDMappings = specMap(as.UIDMap())
			cfg.GIDMappings = specMap(as.GIDMap())
		}
		for _, v := range def.Volumes {
			src := filepath.Join(s.Volumes, def.Name, v.Name)
			if err := os.MkdirAll(src, 0o755); err != nil {
				return nil, fmt.Errorf("service %s: volume %s: %w", def.Name, v.Name, err)
			}
			if mapped {
				if err := mappedVolume(s.Volumes, def.Name, src, as); err != nil {
					return nil, fmt.Errorf("service %s: volume %s: %w", def.Name, v.Name, err)
				}
			}
			cfg.Mounts = append(cfg.Mounts, ociruntime.Bind{Source: src, Target: v.Path})
		}
		out = append(out, &service{
			def: def, img: img, cfg: cfg, restart: make(chan struct{}, 1),
			st: Status{Name: def.Name, State: StateStarting, Image: img.Name(), Digest: def.Image.Digest.String(), Restart: def.Restart},
		})
	}
	return out, nil
}

// Config turns a service definition and its image's config into a
// container config (through ociruntime.FromImage, the one place image
// config and overrides meet). Command replaces the image's entrypoint (and
// cmd); Args replace the image's cmd. Env entries override the image's.
func Config(def manifest.Service, img ocispec.ImageConfig) (ociruntime.Config, error) {
	cfg, err := ociruntime.FromImage(img, ociruntime.Overrides{Entrypoint: def.Command, Cmd: def.Args, Env: def.Env, User: def.User})
	if err != nil {
		return ociruntime.Config{}, fmt.Errorf("service %s: %w", def.Name, err)
	}
	network := def.Network
	if network == manifest.NetworkPrivate {
		network = ociruntime.NetworkNone
	}
	var caps []string // nil: the runtime's default set (manifests from before noCapabilities)
	switch {
	case len(def.Capabilities) > 0:
		caps = def.Capabilities
	case def.NoCapabilities:
		caps = []string{} // exactly none
	}
	cfg.Hostname, cfg.Capabilities, cfg.Network, cfg.ReadOnly = def.Name, caps, network, def.ReadOnly
	if def.Init {
		p, err := ociruntime.FindInit("")
		if err != nil {
			return ociruntime.Config{}, fmt.Errorf("service %s: init: %w", def.Name, err)
		}
		ociruntime.WithInit(&cfg, p)
	}
	return cfg, nil
}

// save updates the status and writes it, under the service's lock: two
// goroutines saving at once (the loop and markRunning) must not leave the
// older state in the file.
func (s *Supervisor) save(sv *service, f func(*Status)) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	f(&sv.st)
	if err := writeJSON(statusFile(s.Dir, sv.st.Name), sv.st); err != nil {
		s.logf("service %s: saving state: %v", sv.st.Name, err)
	}
}

type result struct {
	code int
	err  error
}

// loop runs one service until ctx ends: start, wait, restart per policy.
func (s *Supervisor) loop(ctx context.Context, sv *service) {
	name := sv.def.Name
	id := IDPrefix + name
	logPath := LogFile(s.Dir, name)
	failures := 0
	for {
		logf, err := openLog(logPath, s.LogMax)
		if err != nil {
			s.save(sv, func(st *Status) { st.State, st.Error = StateFailed, err.Error() })
			return
		}
		logf.vesself("starting %s (%s)", name, sv.img.Digest())
		s.save(sv, func(st *Status) {
			st.State, st.Started, st.NextStart, st.Error, st.ExitCode = StateStarting, time.Now().UTC(), time.Time{}, "", nil
		})
		cfg := sv.cfg
		var finish func(bool) (string, error)
		if s.Watch != nil {
			if finish, err = s.Watch(&cfg); err != nil {
				s.logf("service %s: watching for refused capabilities: %v (running it unwatched)", name, err)
				finish = nil
			}
		}
		start := time.Now()
		runCtx, kill := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan result, 1)
		go func() {
			code, err := s.Launcher.Run(runCtx, container.Spec{
				ID: id, Image: sv.img, Config: cfg,
				Started: func() { go s.markRunning(runCtx, sv, id) },
			}, ociruntime.Stdio{Stdout: logf.stream(StreamStdout), Stderr: logf.stream(StreamStderr), NoForward: true})
			done <- result{code, err}
		}()
		var r result
		requested := false
		select {
		case r = <-done:
		case <-ctx.Done():
			s.save(sv, func(st *Status) { st.State = StateStopping })
			r = s.stop(id, done, kill)
		case <-sv.restart:
			s.save(sv, func(st *Status) { st.State = StateStopping })
			r = s.stop(id, done, kill)
			requested = true
		}
		kill()
		if r.err == nil && r.code >= 0 {
			sv.markStarted() // it ran, however briefly
		}
		ran := time.Since(start)
		msg := fmt.Sprintf("exited with code %d after %s", r.code, ran.Round(time.Millisecond))
		if r.err != nil {
			msg = "failed: " + r.err.Error()
		}
		note := ""
		if finish != nil { // before the exit line: whoever reads that sees the note too
			failed := (r.err != nil || r.code != 0) && ctx.Err() == nil && !requested
			var err error
			if note, err = finish(failed); err != nil {
				s.logf("service %s: watching for refused capabilities: %v", name, err)
			}
		}
		line := msg + "\n"
		if note != "" {
			line += "note: " + note + "\n"
		}
		logf.vesself("%s", line) // one write: a reader sees both lines or neither
		logf.Close()
		s.logf("service %s %s", name, msg)
		if note != "" {
			s.logf("service %s: %s", name, note)
		}
		code := r.code
		s.save(sv, func(st *Status) {
			st.ExitCode = &code
			if r.err != nil {
				st.ExitCode, st.Error = nil, r.err.Error()
			}
		})
		if ctx.Err() != nil {
			s.save(sv, func(st *Status) { st.State = StateExited })
			return
		}
		if requested {
			s.save(sv, func(st *Status) { st.Restarts++ })
			failures = 0
			continue
		}
		if !restarts(sv.def.Restart, r) {
			state := StateExited
			if r.err != nil {
				state = StateFailed
			}
			s.save(sv, func(st *Status) { st.State = state })
			select { // an explicit restart request still starts it again
			case <-ctx.Done():
				return
			case <-sv.restart:
				s.save(sv, func(st *Status) { st.Restarts++ })
				failures = 0
				continue
			}
		}
		if ran >= s.ResetAfter {
			failures = 0
		}
		delay := s.MinBackoff << min(failures, 20)
		if delay > s.MaxBackoff || delay <= 0 {
			delay = s.MaxBackoff
		}
		failures++
		s.save(sv, func(st *Status) { st.State, st.NextStart = StateBackoff, time.Now().Add(delay).UTC() })
		select {
		case <-ctx.Done():
			s.save(sv, func(st *Status) { st.State = StateExited })
			return
		case <-sv.restart:
		case <-time.After(delay):
		}
		s.save(sv, func(st *Status) { st.Restarts++ })
	}
}

// running reports whether the runtime says container id is running.
func (s *Supervisor) running(id string) bool {
	states, err := s.Launcher.Runtime.List(context.Background())
	if err != nil {
		return false
	}
	for _, st := range states {
		if st.ID == id {
			return st.Status == "running"
		}
	}
	return false
}

// markRunning sets the service's state to running once the runtime
// reports its container running (polling, until ctx ends).
func (s *Supervisor) markRunning(ctx context.Context, sv *service, id string) {
	for {
		if s.running(id) {
			s.save(sv, func(st *Status) {
				// ctx ends (under the same lock) before the loop moves
				// on: a run that is over must not mark the next one.
				if st.State == StateStarting && ctx.Err() == nil {
					st.State = StateRunning
					sv.markStarted()
				}
			})
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// restarts applies a restart policy to how a run ended.
func restarts(policy string, r result) bool {
	switch policy {
	case manifest.RestartNever:
		return false
	case manifest.RestartOnFailure:
		return r.err != nil || r.code != 0
	}
	return true
}

// stop ends a running container gracefully: SIGTERM, then SIGKILL after
// the stop timeout. It returns how the run ended. The container may still
// be being created (the runtime does not know it yet): SIGTERM is retried
// until it lands, the run ends or the timeout passes.
func (s *Supervisor) stop(id string, done <-chan result, kill context.CancelFunc) result {
	bg := context.Background()
	timeout := time.After(s.StopTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	sent := false
	for !sent {
		// A container still being created is left to finish: a signal
		// then would kill the runtime's init, not the service.
		if s.running(id) {
			sent = s.Launcher.Runtime.Kill(bg, id, syscall.SIGTERM) == nil
		}
		if sent {
			break
		}
		select {
		case r := <-done:
			return r
		case <-timeout:
			return s.escalate(id, done, kill)
		case <-tick.C:
		}
	}
	select {
	case r := <-done:
		return r
	case <-timeout:
	}
	return s.escalate(id, done, kill)
}

func (s *Supervisor) escalate(id string, done <-chan result, kill context.CancelFunc) result {
	s.logf("container %s ignored SIGTERM for %s; killing it", id, s.StopTimeout)
	_ = s.Launcher.Runtime.Kill(context.Background(), id, syscall.SIGKILL)
	select {
	case r := <-done:
		return r
	case <-time.After(5 * time.Second):
	}
	kill()
	r := <-done
	if errors.Is(r.err, context.Canceled) {
		r = result{code: 128 + int(syscall.SIGKILL)}
	}
	return r
}

func specMap(m []userns.IDMap) []specs.LinuxIDMapping {
	var out []specs.LinuxIDMapping
	for _, e := range m {
		out = append(out, specs.LinuxIDMapping{ContainerID: e.ContainerID, HostID: e.HostID, Size: e.Size})
	}
	return out
}

// mappedVolume gives a volume to the service's mapped root: the volume
// directory is owned by it and private (0700), so no other service's root,
// another host id, can look in; the directories above it, up to the
// store root, only let the runtime, running as the mapped root, through. Files already in the
// volume keep their owners: a volume used before the service had a
// namespace is re-owned by hand (chown -R), not behind the user's back.
func mappedVolume(root, service, dir string, as userns.Assignment) error {
	if err := container.Traversable(filepath.Dir(root), root, filepath.Join(root, service)); err != nil {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	if st.Uid != as.UID.Start || st.Gid != as.GID.Start {
		if err := os.Chown(dir, int(as.UID.Start), int(as.GID.Start)); err != nil {
			return fmt.Errorf("give it to the mapped root %d:%d: %w", as.UID.Start, as.GID.Start, err)
		}
	}
	return os.Chmod(dir, 0o700)
}
