package mount

import (
	"context"

	"github.com/vesselos/vessel/internal/store"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func owner(t *testing.T, p string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// TestIdmappedLayers mounts one image for two containers with different
// id maps: each sees the layers' root-owned files as its own mapped root,
// the layer mounts stay shared and unmapped, and a copied-up file keeps
// the mapped owner in the upper directory.
func TestIdmappedLayers(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "idm:1")
	maps := map[string]uint32{"a": 1100000, "b": 1165536}
	plans := map[string]*Plan{}
	for id, host := range maps {
		m := []IDMapping{{ContainerID: 0, HostID: host, Size: 65536}}
		start := time.Now()
		p, err := e.m.Mount(context.Background(), img, id, filepath.Join(e.run, "c", id), Self(), Options{Writable: true, UIDMap: m, GIDMap: m})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("container %s: idmapped mount in %s", id, time.Since(start))
		plans[id] = p
		if p.IDMap == nil {
			t.Fatal("plan has no id map")
		}
	}
	for id, host := range maps {
		target := plans[id].Target
		for _, f := range []string{"", "etc/os", "data/a", "bin/hello"} {
			if u, g := owner(t, filepath.Join(target, f)); u != host || g != host {
				t.Errorf("container %s: /%s owned by %d:%d, want %d:%d", id, f, u, g, host, host)
			}
		}
		if got := read(t, filepath.Join(target, "data/a")); got != "top\n" {
			t.Errorf("/data/a = %q", got)
		}
		// Copy-up: appending to a layer file writes it to the upper
		// directory, owned by the mapped root.
		f, err := os.OpenFile(filepath.Join(target, "etc/os"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("changed\n")
		f.Close()
		if u, _ := owner(t, filepath.Join(plans[id].Upper, "upper/etc/os")); u != host {
			t.Errorf("container %s: copied-up file owned by %d, want %d", id, u, host)
		}
	}
	// The layer mounts are shared and show the ids on disk.
	if plans["a"].Layers[0].Dir != plans["b"].Layers[0].Dir {
		t.Error("layer mounts not shared")
	}
	if u, _ := owner(t, filepath.Join(plans["a"].Layers[0].Dir, "etc/os")); u != 0 {
		t.Errorf("shared layer mount shows /etc/os owned by %d, want 0 (on disk)", u)
	}
	if got := read(t, filepath.Join(plans["b"].Layers[0].Dir, "etc/os")); got != "vessel-test\n" {
		t.Errorf("a container's write reached the layer: %q", got)
	}
	for id := range maps {
		if err := e.m.Unmount(id); err != nil {
			t.Fatal(err)
		}
	}
}

func TestIdmapPlanChecks(t *testing.T) {
	e := newEnv(t)
	img := testImage(t, e.s, "idm:2")
	m := []IDMapping{{ContainerID: 0, HostID: 1100000, Size: 65536}}
	for name, opt := range map[string]Options{
		"uid only":  {Writable: true, UIDMap: m},
		"read-only": {UIDMap: m, GIDMap: m},
		"no root":   {Writable: true, UIDMap: []IDMapping{{ContainerID: 1, HostID: 1100000, Size: 5}}, GIDMap: m},
	} {
		if _, err := NewPlan(e.run, "x", img, "/x", ModeUserspace, opt); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewPlan(e.run, "x", img, "/x", ModeFuse, Options{Writable: true, UIDMap: m, GIDMap: m}); err == nil {
		t.Error("fuse mode with an id map accepted")
	}
}

// BenchmarkContainerRoot: mount and unmount a container root, plain and
// idmapped (the layers stay mounted and verified across iterations).
//
//	go test -run XX -bench ContainerRoot -benchtime 200x ./internal/mount/
func BenchmarkContainerRoot(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	for _, mapped := range []bool{false, true} {
		name := "plain"
		opt := Options{Writable: true}
		if mapped {
			name = "idmapped"
			m := []IDMapping{{ContainerID: 0, HostID: 1100000, Size: 65536}}
			opt.UIDMap, opt.GIDMap = m, m
		}
		b.Run(name, func(b *testing.B) {
			s, err := store.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			run := b.TempDir()
			m := &Manager{Run: run, Mode: ModeUserspace}
			img := testImage(b, s, "bench:1")
			// A holder keeps the layers mounted, as a running service does.
			if _, err := m.Mount(context.Background(), img, "hold", filepath.Join(run, "hold"), Self(), Options{Writable: true}); err != nil {
				b.Fatal(err)
			}
			defer m.Unmount("hold")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := m.Mount(context.Background(), img, "c", filepath.Join(run, "c"), Self(), opt); err != nil {
					b.Fatal(err)
				}
				if err := m.Unmount("c"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
