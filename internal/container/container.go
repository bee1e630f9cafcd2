// Package container runs one container from a stored image: it mounts a
// fresh root filesystem from the verified layers (package mount), writes an
// OCI runtime bundle for it (package runtime), runs it, and unmounts again,
// on every path. It is the one container runner: `vessel run`, the service
// supervisor and `vessel build` all start containers through Launcher.Run.
package container

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
)

// Launcher starts containers.
type Launcher struct {
	Mounts  *mount.Manager
	Runtime ociruntime.Runtime
}

// Spec is one container to run.
type Spec struct {
	ID     string       // container id; also names its mount and bundle
	Image  *mount.Image // from mount.LocalImage or mount.SystemImage
	Config ociruntime.Config
	// Upper keeps the writable layer in this directory instead of a fresh
	// one that is thrown away (vessel build uses it to capture changes).
	Upper string
	// Prepare, if set, is called with the mounted root filesystem before
	// the bundle is written; an error stops the run (vessel build uses it
	// to copy files into the new layer and note which mount points the
	// runtime will create).
	Prepare func(rootfs string) error
	// Started, if set, is called once the container is about to start
	// (root filesystem mounted, bundle written).
	Started func()
}

// Dir is the bundle directory of container id under the run directory.
func Dir(run, id string) string { return filepath.Join(run, "containers", id) }

// Run mounts the image, runs the container in the foreground and returns
// its exit code. The root filesystem is always a fresh writable overlay
// (read-only to the process if Config.ReadOnly); it and the bundle are
// removed before Run returns, whatever happened.
func (l *Launcher) Run(ctx context.Context, s Spec, stdio ociruntime.Stdio) (code int, err error) {
	if !ociruntime.ValidID(s.ID) {
		return -1, fmt.Errorf("container id %q: use a-z, 0-9, '-', '_' and '.'", s.ID)
	}
	run := l.Mounts.Run
	if run == "" {
		run = mount.DefaultRun
	}
	dir := Dir(run, s.ID)
	rootfs := filepath.Join(dir, "rootfs")
	opt := mount.Options{Writable: true, Upper: s.Upper}
	if _, err := l.Mounts.Mount(ctx, s.Image, s.ID, rootfs, mount.Self(), opt); err != nil {
		if errors.Is(err, mount.ErrMounted) {
			return -1, fmt.Errorf("container %s already exists (is it still running?); choose another name", s.ID)
		}
		return -1, err
	}
	defer func() {
		if uerr := l.Mounts.Unmount(s.ID); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount container %s: %w", s.ID, uerr))
		}
	}()
	if s.Prepare != nil {
		if err := s.Prepare(rootfs); err != nil {
			return -1, err
		}
	}
	cfg := s.Config
	cfg.ID, cfg.Rootfs = s.ID, rootfs
	if cfg.CgroupParent == "" && run != mount.DefaultRun {
		// Ids are unique per run directory: keep other run directories'
		// containers (tests, a second store) out of each other's cgroups.
		cfg.CgroupParent = fmt.Sprintf("/vessel/%x", sha256.Sum256([]byte(run)))[:len("/vessel/")+12]
	}
	if cfg.Hostname == "" {
		cfg.Hostname = s.ID
	}
	spec, err := ociruntime.Spec(cfg)
	if err != nil {
		return -1, err
	}
	if err := ociruntime.WriteBundle(dir, spec); err != nil {
		return -1, err
	}
	if s.Started != nil {
		s.Started()
	}
	return l.Runtime.Run(ctx, dir, s.ID, stdio)
}
