package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

type tarEntry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
	uid        int
	pax        map[string]string
}

func mkTar(t *testing.T, entries ...tarEntry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid, Size: int64(len(e.body)), PAXRecords: e.pax, Format: tar.FormatPAX}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		must(t, tw.WriteHeader(h))
		if e.body != "" {
			tw.Write([]byte(e.body))
		}
	}
	must(t, tw.Close())
	return &buf
}

func TestUnpackTranslatesWhiteouts(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	err := Unpack(mkTar(t,
		tarEntry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "etc/.wh.passwd", typ: tar.TypeReg},
		tarEntry{name: "var/cache/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "var/cache/.wh..wh..opq", typ: tar.TypeReg},
		tarEntry{name: "var/cache/new", typ: tar.TypeReg, body: "x"},
		tarEntry{name: "bin/tool", typ: tar.TypeReg, body: "#!", mode: 0o4755, uid: 1000,
			pax: map[string]string{"SCHILY.xattr.security.capability": string([]byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}), "SCHILY.xattr.user.k": "v"}},
		tarEntry{name: "bin/hard", typ: tar.TypeLink, link: "bin/tool"},
		tarEntry{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		tarEntry{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
		tarEntry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
	), dir)
	must(t, err)
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, "etc/passwd"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/passwd is not an overlay whiteout: mode %o rdev %d", st.Mode, st.Rdev)
	}
	v := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "var/cache"), OverlayOpaqueXattr, v); err != nil || string(v[:n]) != "y" {
		t.Errorf("var/cache not opaque: %q %v", v[:max(n, 0)], err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "var/cache/.wh..wh..opq")); !errors.Is(err, os.ErrNotExist) {
		t.Error("opaque marker extracted as a file")
	}
	must(t, unix.Lstat(filepath.Join(dir, "bin/tool"), &st))
	if st.Mode&0o7777 != 0o4755 || st.Uid != 1000 || st.Nlink != 2 {
		t.Errorf("bin/tool: mode %o uid %d nlink %d", st.Mode&0o7777, st.Uid, st.Nlink)
	}
	if n, err := unix.Lgetxattr(filepath.Join(dir, "bin/tool"), "security.capability", make([]byte, 64)); err != nil || n != 20 {
		t.Errorf("security.capability: %d %v", n, err)
	}
	must(t, unix.Lstat(filepath.Join(dir, "tmp"), &st))
	if st.Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o", st.Mode&0o7777)
	}
	must(t, unix.Lstat(filepath.Join(dir, "run/fifo"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo mode %o", st.Mode)
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	needRoot(t)
	outside := t.TempDir()
	cases := map[string][]tarEntry{
		"../escape":   {{name: "../escape", typ: tar.TypeReg, body: "x"}},
		"/abs":        {{name: "/abs", typ: tar.TypeReg, body: "x"}},
		"a/../../b":   {{name: "a/../../b", typ: tar.TypeReg}},
		"hardlink":    {{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}},
		"abshardlink": {{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}},
		"through symlink": {
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "evil/planted", typ: tar.TypeReg, body: "x"},
		},
		"relative symlink out": {{name: "d/up", typ: tar.TypeSymlink, link: "../../.."}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			err := Unpack(mkTar(t, entries...), t.TempDir())
			var ue *UnsafeEntryError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want an UnsafeEntryError", err)
			}
			if ue.Name != entries[len(entries)-1].name {
				t.Errorf("error names %q, want %q", ue.Name, entries[len(entries)-1].name)
			}
		})
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("a file was planted outside the root: %v", ents)
	}
	// an absolute symlink target is fine: it resolves inside the container
	must(t, Unpack(mkTar(t, tarEntry{name: "bin/sh", typ: tar.TypeSymlink, link: "/bin/busybox"}), t.TempDir()))
}

func TestUnpackBadTar(t *testing.T) {
	if err := Unpack(bytes.NewReader([]byte("this is not a tar archive at all, but it is long enough to be read as a header block........................................................................................................................................................................................................................................................................................................................................................................................................................................................")), t.TempDir()); err == nil {
		t.Fatal("garbage accepted")
	}
}

// Whiteouts are validated before anything is removed: one whose target is
// empty, "." or "..", a reserved .wh..wh. name, or a whiteout or opaque
// marker that is not a plain file is refused, and nothing outside the
// directory that holds it is touched.
func TestUnpackRefusesBadWhiteouts(t *testing.T) {
	needRoot(t)
	cases := map[string]tarEntry{
		"dotdot at root":   {name: ".wh...", typ: tar.TypeReg},
		"dotdot in dir":    {name: "a/.wh...", typ: tar.TypeReg},
		"dot at root":      {name: ".wh..", typ: tar.TypeReg},
		"dot in dir":       {name: "a/.wh..", typ: tar.TypeReg},
		"empty at root":    {name: ".wh.", typ: tar.TypeReg},
		"empty in dir":     {name: "a/.wh.", typ: tar.TypeReg},
		"reserved":         {name: "a/.wh..wh..plnk", typ: tar.TypeReg},
		"opaque near miss": {name: "a/.wh..wh..opqx", typ: tar.TypeReg},
		"opaque as dir":    {name: "a/.wh..wh..opq/", typ: tar.TypeDir, mode: 0o755},
		"opaque symlink":   {name: "a/.wh..wh..opq", typ: tar.TypeSymlink, link: "/"},
		"whiteout dir":     {name: "a/.wh.keep/", typ: tar.TypeDir, mode: 0o755},
		"whiteout device":  {name: "a/.wh.keep", typ: tar.TypeChar, mode: 0o600},
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			outer := t.TempDir()
			must(t, os.WriteFile(filepath.Join(outer, "sibling"), []byte("x"), 0o644))
			dir := filepath.Join(outer, "layer")
			must(t, os.Mkdir(dir, 0o755))
			err := Unpack(mkTar(t,
				tarEntry{name: "a/", typ: tar.TypeDir, mode: 0o755},
				tarEntry{name: "a/keep", typ: tar.TypeReg, body: "k"},
				bad,
			), dir)
			var ue *UnsafeEntryError
			if !errors.As(err, &ue) || ue.Name != bad.name {
				t.Fatalf("err = %v, want an UnsafeEntryError naming %q", err, bad.name)
			}
			if b, err := os.ReadFile(filepath.Join(outer, "sibling")); err != nil || string(b) != "x" {
				t.Errorf("a file outside the layer directory was touched: %q %v", b, err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "a/keep")); err != nil || string(b) != "k" {
				t.Errorf("a/keep was removed by a whiteout that names no file: %q %v", b, err)
			}
			if _, err := os.Lstat(filepath.Join(dir, "a")); err != nil {
				t.Errorf("a: %v", err)
			}
		})
	}
	// the valid forms still work, including an opaque marker at the root
	dir := t.TempDir()
	must(t, Unpack(mkTar(t,
		tarEntry{name: ".wh..wh..opq", typ: tar.TypeReg},
		tarEntry{name: "a/.wh..hidden", typ: tar.TypeReg},
		tarEntry{name: "a/.wh.x.wh.", typ: tar.TypeReg},
	), dir))
	var st unix.Stat_t
	for _, p := range []string{"a/.hidden", "a/x.wh."} {
		must(t, unix.Lstat(filepath.Join(dir, p), &st))
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("%s is not a whiteout: mode %o", p, st.Mode)
		}
	}
}
