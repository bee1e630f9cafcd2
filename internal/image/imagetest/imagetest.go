// Package imagetest makes small real images for tests with package image.
// Only tests import it.
package imagetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/store"
)

// Squashfs creates the image ref in st with one verity-protected squashfs
// layer holding files (path in the layer -> content), made reproducibly
// (a fixed SOURCE_DATE_EPOCH), and returns its descriptor. It skips the
// test when not root or when mksquashfs is not installed.
func Squashfs(t testing.TB, st *store.Store, ref string, files map[string]string) ocispec.Descriptor {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("image create needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs is not installed (make deps)")
	}
	dir := t.TempDir()
	for n, c := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	epoch := int64(1700000000)
	res, err := image.Create(context.Background(), st, ref, []string{dir}, image.CreateOptions{Format: layer.DefaultFormat(layer.Squashfs), SourceDateEpoch: &epoch})
	if err != nil {
		t.Fatalf("create test image %s: %v", ref, err)
	}
	return res.Descriptor
}
