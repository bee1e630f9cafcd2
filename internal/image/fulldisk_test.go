package image

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/store"
)

// A create that fails on a full disk (a 1 MiB tmpfs as the store) leaves
// no temp file and no tag behind, and the store takes a small image next.
func TestCreateOnFullDisk(t *testing.T) {
	need(t, "mksquashfs")
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	disk := t.TempDir()
	if err := unix.Mount("tmpfs", disk, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(disk, 0); err != nil {
			t.Errorf("unmount %s: %v", disk, err)
		}
	})
	s, err := store.Open(filepath.Join(disk, "store"))
	must(t, err)
	big := t.TempDir()
	noise := make([]byte, 3<<20) // random: squashfs cannot compress it below 1 MiB
	rand.Read(noise)
	must(t, os.WriteFile(filepath.Join(big, "noise"), noise, 0o644))
	_, err = Create(context.Background(), s, "big:1", []string{big}, CreateOptions{SourceDateEpoch: &epoch})
	if err == nil {
		t.Fatal("a 3 MiB layer fit in a 1 MiB store")
	}
	if _, err := s.Resolve("big:1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("a failed create left a tag")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(ents) != 0 {
		t.Fatalf("the failed create left %s in the store's tmp", ents[0].Name())
	}
	if _, err := Create(context.Background(), s, "small:1", []string{tree(t, map[string]string{"a": "x"})}, CreateOptions{SourceDateEpoch: &epoch}); err != nil {
		t.Fatalf("the store is unusable after a create failed on a full disk: %v", err)
	}
}
