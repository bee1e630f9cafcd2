package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/verity"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it)", tool)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: device nodes, ownership and loop mounts (runs in CI as root)")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// richTree makes a directory with every file type and attribute a layer
// must keep.
func richTree(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	p := func(s string) string { return filepath.Join(d, s) }
	must(t, os.MkdirAll(p("etc/sub"), 0o755))
	must(t, os.WriteFile(p("etc/file"), []byte("content\n"), 0o640))
	must(t, os.WriteFile(p("etc/big"), bytes.Repeat([]byte("0123456789abcdef"), 70000), 0o644))
	must(t, os.Symlink("../etc/file", p("etc/link")))
	must(t, os.Symlink("/abs/target", p("abslink")))
	must(t, os.Link(p("etc/file"), p("etc/hardlink")))
	must(t, unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Mknod(p("blk"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 200))))
	must(t, unix.Mkfifo(p("fifo"), 0o600))
	l, err := net.Listen("unix", p("sock"))
	must(t, err)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	must(t, os.WriteFile(p("suid"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Mkdir(p("tmp"), 0o755))
	must(t, os.Lchown(p("etc/file"), 1234, 5678))
	must(t, os.Lchown(p("etc/link"), 42, 43))
	must(t, os.Chmod(p("suid"), 0o4755|fs.ModeSetuid))
	must(t, unix.Chmod(p("suid"), 0o4755))
	must(t, unix.Chmod(p("tmp"), 0o1777))
	must(t, unix.Lsetxattr(p("etc/file"), "user.note", []byte("kept"), 0))
	// security.capability: v2 caps with cap_net_bind_service (bit 10) permitted+effective
	capv2 := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(t, unix.Lsetxattr(p("suid"), "security.capability", capv2, 0))
	// overlay whiteout and opaque directory
	must(t, os.Mkdir(p("opaque"), 0o755))
	must(t, unix.Lsetxattr(p("opaque"), OverlayOpaqueXattr, []byte("y"), 0))
	must(t, unix.Mknod(p("etc/removed"), unix.S_IFCHR, 0))
	return d
}

type entry struct {
	Mode       fs.FileMode
	UID, GID   uint32
	Rdev       uint64
	Size       int64
	Content    string
	Link       string
	Xattrs     string
	HardlinkOf string
}

// snapshot describes a tree for comparison (times excluded).
func snapshot(t *testing.T, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		info, _ := d.Info()
		e := entry{Mode: info.Mode(), UID: st.Uid, GID: st.Gid, Xattrs: xattrs(t, path)}
		switch {
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(path)
			e.Size, e.Content = int64(len(b)), fmt.Sprintf("%x", b[:min(len(b), 64)])
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					e.HardlinkOf = first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case info.Mode()&fs.ModeSymlink != 0:
			e.Link, _ = os.Readlink(path)
		case info.Mode()&(fs.ModeDevice|fs.ModeCharDevice) != 0:
			e.Rdev = st.Rdev
		}
		if rel == "." {
			e.Mode, e.UID, e.GID = 0, 0, 0 // the image root's metadata is not the source's
		}
		out[rel] = e
		return nil
	})
	must(t, err)
	return out
}

func xattrs(t *testing.T, path string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if err != nil || n == 0 {
		return ""
	}
	var kv []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 256)
		m, _ := unix.Lgetxattr(path, name, v)
		kv = append(kv, fmt.Sprintf("%s=%x", name, v[:max(m, 0)]))
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func mountBlob(t *testing.T, b *Built, typ Type) string {
	t.Helper()
	// mount only the filesystem part of the blob, as a verity device would expose it
	mnt := t.TempDir()
	out, err := exec.Command("mount", "-t", string(typ), "-o", fmt.Sprintf("loop,ro,sizelimit=%d", b.DataSize), b.Path, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("mount %s: %v: %s", typ, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return mnt
}

func TestBuildIsFaithful(t *testing.T) {
	needRoot(t)
	need(t, "mksquashfs", "mkfs.erofs", "mount")
	src := richTree(t)
	want := snapshot(t, src)
	for _, f := range []Format{DefaultFormat(Squashfs), DefaultFormat(Erofs), {Type: Erofs}} {
		t.Run(f.MediaType(), func(t *testing.T) {
			b, err := Build(context.Background(), src, filepath.Join(t.TempDir(), "blob"), BuildOptions{Format: f})
			must(t, err)
			got := snapshot(t, mountBlob(t, b, f.Type))
			for name, w := range want {
				g, ok := got[name]
				if !ok {
					t.Errorf("%s: missing from the image", name)
					continue
				}
				if name == "sock" && g.Mode&fs.ModeSocket == 0 {
					t.Errorf("sock: mode %v, want a socket", g.Mode)
					continue
				}
				if g != w {
					t.Errorf("%s differs:\n got  %+v\n want %+v", name, g, w)
				}
			}
			for name := range got {
				if _, ok := want[name]; !ok {
					t.Errorf("%s: in the image but not the source", name)
				}
			}
		})
	}
}

func TestBlobAcceptedByVeritysetup(t *testing.T) {
	need(t, "mksquashfs", "mkfs.erofs", "veritysetup")
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte{1, 2, 3}, 1<<20), 0o644))
	for _, f := range []Format{DefaultFormat(Squashfs), DefaultFormat(Erofs)} {
		b, err := Build(context.Background(), src, filepath.Join(t.TempDir(), "blob"), BuildOptions{Format: f})
		must(t, err)
		out, err := exec.Command("veritysetup", "verify", b.Path, b.Path, b.RootHash,
			fmt.Sprintf("--data-blocks=%d", b.DataSize/BlockSize), fmt.Sprintf("--hash-offset=%d", b.DataSize)).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: veritysetup verify rejected vessel's blob: %v: %s", f.Type, err, out)
		}
		st, _ := os.Stat(b.Path)
		if st.Size() != b.Descriptor.Size || b.DataSize%BlockSize != 0 {
			t.Fatalf("size %d, descriptor %d, data %d", st.Size(), b.Descriptor.Size, b.DataSize)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	need(t, "mksquashfs", "mkfs.erofs")
	epoch := int64(1700000000)
	mk := func() string {
		d := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(d, "a/b"), 0o755))
		must(t, os.WriteFile(filepath.Join(d, "a/b/c"), []byte("same"), 0o644))
		must(t, os.Symlink("b/c", filepath.Join(d, "a/l")))
		return d
	}
	for _, f := range []Format{DefaultFormat(Squashfs), DefaultFormat(Erofs)} {
		// two separately created trees (different mtimes and inode numbers)
		b1, err := Build(context.Background(), mk(), filepath.Join(t.TempDir(), "1"), BuildOptions{Format: f, SourceDateEpoch: &epoch})
		must(t, err)
		b2, err := Build(context.Background(), mk(), filepath.Join(t.TempDir(), "2"), BuildOptions{Format: f, SourceDateEpoch: &epoch})
		must(t, err)
		x, _ := os.ReadFile(b1.Path)
		y, _ := os.ReadFile(b2.Path)
		if !bytes.Equal(x, y) || b1.Descriptor.Digest != b2.Descriptor.Digest {
			t.Errorf("%s: two builds differ: %s vs %s", f.Type, b1.Descriptor.Digest, b2.Descriptor.Digest)
		}
	}
}

func TestVerifyRejectsTampering(t *testing.T) {
	need(t, "mksquashfs")
	src := t.TempDir()
	noise := make([]byte, 300000) // incompressible, so the image spans many blocks
	rand.New(rand.NewSource(1)).Read(noise)
	must(t, os.WriteFile(filepath.Join(src, "f"), noise, 0o644))
	build := func() (*Built, []byte) {
		b, err := Build(context.Background(), src, filepath.Join(t.TempDir(), "blob"), BuildOptions{})
		must(t, err)
		data, _ := os.ReadFile(b.Path)
		return b, data
	}
	verifyBytes := func(b *Built, data []byte) error {
		d := b.Descriptor
		d.Size = int64(len(data))
		return Verify(bytes.NewReader(data), d)
	}
	b, data := build()
	if err := verifyBytes(b, data); err != nil {
		t.Fatalf("pristine blob: %v", err)
	}

	t.Run("flipped data bit", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[b.DataSize-100] ^= 1
		var ce *verity.CorruptionError
		if err := verifyBytes(b, bad); !errors.As(err, &ce) || ce.Area != "data" || ce.Block != uint64((b.DataSize-100)/BlockSize) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("flipped tree bit", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[b.DataSize+BlockSize+5] ^= 1 // first hash block after the superblock
		if err := verifyBytes(b, bad); err == nil {
			t.Fatal("accepted")
		}
	})
	t.Run("wrong root hash", func(t *testing.T) {
		d := b.Descriptor
		d.Annotations = map[string]string{AnnotationVerityRoot: strings.Repeat("ab", 32)}
		var ce *verity.CorruptionError
		if err := Verify(bytes.NewReader(data), d); !errors.Is(err, verity.ErrRootMismatch) && !errors.As(err, &ce) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("old annotation name", func(t *testing.T) {
		d := b.Descriptor
		d.Annotations = map[string]string{AnnotationVerityRootOld: b.RootHash}
		if err := Verify(bytes.NewReader(data), d); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no annotation", func(t *testing.T) {
		d := b.Descriptor
		d.Annotations = nil
		if err := Verify(bytes.NewReader(data), d); !errors.Is(err, ErrNoVerity) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		if err := verifyBytes(b, data[:len(data)-4096]); err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("err = %v", err)
		}
		if err := verifyBytes(b, data[:b.DataSize]); err == nil {
			t.Fatal("blob without tree accepted")
		}
	})
	t.Run("not an image", func(t *testing.T) {
		junk := bytes.Repeat([]byte("junk"), 4096)
		if err := verifyBytes(b, junk); err == nil || !strings.Contains(err.Error(), "not a squashfs image") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("tar media type", func(t *testing.T) {
		d := b.Descriptor
		d.MediaType = "application/vnd.oci.image.layer.v1.tar"
		if err := Verify(bytes.NewReader(data), d); err == nil || !strings.Contains(err.Error(), "not a squashfs or erofs layer") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestBuildErrors(t *testing.T) {
	need(t, "mksquashfs")
	if _, err := Build(context.Background(), "/nonexistent", filepath.Join(t.TempDir(), "b"), BuildOptions{}); err == nil || !strings.Contains(err.Error(), "/nonexistent") {
		t.Fatalf("missing dir: %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := Build(context.Background(), f, filepath.Join(t.TempDir(), "b"), BuildOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file: %v", err)
	}
	out := filepath.Join(t.TempDir(), "b")
	_, err := Build(context.Background(), t.TempDir(), out, BuildOptions{Format: Format{Type: Squashfs, Compression: "brotli"}})
	if err == nil || !strings.Contains(err.Error(), "brotli") {
		t.Fatalf("bad compression: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("failed build left its output behind")
	}
}

func TestMediaTypes(t *testing.T) {
	for mt, want := range map[string]Format{
		"application/vnd.stacker.image.layer.squashfs+zstd":        {Squashfs, "zstd"},
		"application/vnd.stacker.image.layer.squashfs+zstd+verity": {Squashfs, "zstd"},
		"application/vnd.stacker.image.layer.squashfs":             {Squashfs, ""},
		"application/vnd.stacker.image.layer.erofs+lz4hc":          {Erofs, "lz4hc"},
		"application/vnd.stacker.image.layer.erofs":                {Erofs, ""},
	} {
		got, err := ParseMediaType(mt)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v", mt, got, err)
		}
	}
	for _, bad := range []string{"application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.stacker.image.layer.squashfs+a+b", ""} {
		if _, err := ParseMediaType(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if DefaultFormat(Squashfs).MediaType() != "application/vnd.stacker.image.layer.squashfs+zstd" {
		t.Error(DefaultFormat(Squashfs).MediaType())
	}
}
