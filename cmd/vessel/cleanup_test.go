package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/supervise"
)

// cleanupRun stops what a story left running in its run directory, pass or
// fail: a supervisor started with --detach, containers, mounts. A failed
// story must not leave services holding ports for the next one.
func cleanupRun(run string) func() {
	return func() {
		if _, err := os.Stat(run); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m := &mount.Manager{Run: run}
		if rt, _, err := ociruntime.Detect(ctx, "", filepath.Join(run, "runtime")); err == nil {
			supervise.Down(ctx, filepath.Join(run, "supervise"), &container.Launcher{Mounts: m, Runtime: rt}, 30*time.Second)
		}
		plans, _, _ := m.Mounted()
		for _, p := range plans {
			m.Unmount(p.ID)
		}
		m.Cleanup()
	}
}
