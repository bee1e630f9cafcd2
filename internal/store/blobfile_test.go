package store

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// returns runs f and fails the test if it has not returned after a
// generous while: it guards against hangs, it does not time anything.
func returns(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s hung on a blob that is not a regular file", what)
		return nil
	}
}

// A blob path that is a FIFO, a device or a symlink is refused by every
// read path at once (no open that waits for a writer, no endless device
// read, no read of whatever a symlink points at), and is not counted as a
// blob the store has.
func TestBlobMustBeRegularFile(t *testing.T) {
	content := "the real content"
	kinds := map[string]func(t *testing.T, p string){
		"fifo": func(t *testing.T, p string) { must(t, unix.Mkfifo(p, 0o644)) },
		"symlink to the same content": func(t *testing.T, p string) {
			other := filepath.Join(t.TempDir(), "elsewhere")
			must(t, os.WriteFile(other, []byte(content), 0o644))
			must(t, os.Symlink(other, p))
		},
		"symlink to /dev/zero": func(t *testing.T, p string) { must(t, os.Symlink("/dev/zero", p)) },
		"directory":            func(t *testing.T, p string) { must(t, os.Mkdir(p, 0o755)) },
		"char device": func(t *testing.T, p string) {
			if err := unix.Mknod(p, unix.S_IFCHR|0o644, int(unix.Mkdev(1, 5))); err != nil {
				t.Skipf("mknod needs CAP_MKNOD: %v", err)
			}
		},
	}
	for name, plant := range kinds {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			desc, err := s.PutBlob(strings.NewReader(content), ocispec.Descriptor{MediaType: "x"})
			must(t, err)
			p, _ := s.BlobPath(desc.Digest)
			must(t, os.Remove(p))
			plant(t, p)
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrNotRegular) || !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s: err = %v, want ErrNotRegular and ErrCorrupt", what, err)
				}
			}
			check("VerifyBlob", returns(t, "VerifyBlob", func() error { return s.VerifyBlob(desc) }))
			check("ReadBlob", returns(t, "ReadBlob", func() error { _, err := s.ReadBlob(desc); return err }))
			check("OpenBlob", returns(t, "OpenBlob", func() error {
				rc, err := s.OpenBlob(desc)
				if err == nil {
					_, err = io.Copy(io.Discard, rc)
					rc.Close()
				}
				return err
			}))
			check("OpenBlobFile", returns(t, "OpenBlobFile", func() error {
				f, err := s.OpenBlobFile(ocispec.Descriptor{Digest: desc.Digest})
				if err == nil {
					f.Close()
				}
				return err
			}))
			if s.HasBlob(desc.Digest) {
				t.Error("HasBlob counts it as a blob")
			}
			// a pull (PutBlob) replaces it with the real blob
			_, err = s.PutBlob(strings.NewReader(content), desc)
			must(t, err)
			must(t, s.VerifyBlob(desc))
		})
	}
}

// Long reads of a blob stop when their context ends.
func TestBlobReadHonoursCancellation(t *testing.T) {
	s := open(t)
	desc, err := s.PutBlob(strings.NewReader(strings.Repeat("x", 1<<20)), ocispec.Descriptor{MediaType: "x"})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.VerifyBlobContext(ctx, desc); !errors.Is(err, context.Canceled) {
		t.Fatalf("VerifyBlobContext after cancel: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
