package recipe

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ImportsDir is where the build container finds imports without dest, as in
// stacker; VesselImportsDir shows the same content.
const (
	ImportsDir       = "/stacker/imports"
	VesselImportsDir = "/vessel/imports"
)

// Resolver finds the content of a stacker://IMAGE/PATH import: the host
// path where PATH of the already built IMAGE can be read (for example inside
// a read-only mount of that image). For an http(s) import it is called with
// an empty image and the URL as path, and returns the downloaded file. The
// executor supplies it; without one, such imports are an error.
type Resolver func(image, path string) (hostPath string, err error)

// placement is where one import's content goes.
type placement struct {
	imp      Import
	src      string // host path, symlinks at the top resolved, no trailing slash
	isDir    bool
	contents bool   // copy the directory's contents into target, not the directory
	target   string // container path
	inImage  bool   // dest import: part of the new layer
}

func (i *Image) importError(imp Import, format string, args ...any) error {
	return &Error{File: i.file, Line: imp.Line, Image: i.Name, Key: "imports", Kind: ErrImport, Msg: fmt.Sprintf("%s: ", imp.Path) + fmt.Sprintf(format, args...)}
}

// CheckBinds checks that the source of every bind exists on this host: a
// missing one is an error naming its line, as in stacker.
func (i *Image) CheckBinds() error {
	for _, b := range i.Binds {
		if _, err := os.Stat(b.Source); err != nil {
			return &Error{File: i.file, Line: b.Line, Image: i.Name, Key: "binds", Kind: ErrImport,
				Msg: fmt.Sprintf("bind source %s (for %s) is not on this host", b.Source, b.Dest), Err: err}
		}
	}
	return nil
}

// urlName is the file name an http(s) import gets: the last element of
// the URL's path, without query or fragment.
func urlName(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	u = strings.TrimSuffix(u, "/")
	if i := strings.LastIndex(u, "/"); i >= 0 && i > strings.Index(u, "://")+2 {
		return u[i+1:]
	}
	return "download"
}

// placements resolves every import of i to a host source and a container
// target. It fails on missing sources, URLs, and two imports that would land
// on the same path.
func (i *Image) placements(resolve Resolver) ([]placement, error) {
	var out []placement
	byTarget := map[string]Import{}
	for _, imp := range i.Imports {
		var src string
		switch {
		case imp.Remote():
			if resolve == nil {
				return nil, i.importError(imp, "http(s) imports need the executor to download them first")
			}
			p, err := resolve("", imp.Source)
			if err != nil {
				return nil, i.importError(imp, "%v", err)
			}
			src = p
		case imp.FromImage != "":
			if resolve == nil {
				return nil, i.importError(imp, "stacker:// imports need the image %q to be built and mounted first", imp.FromImage)
			}
			p, err := resolve(imp.FromImage, imp.ImagePath)
			if err != nil {
				return nil, i.importError(imp, "read %s from image %q: %v", imp.ImagePath, imp.FromImage, err)
			}
			src = p
		default:
			src = imp.Source
		}
		written := imp.Source
		if imp.FromImage != "" {
			written = imp.ImagePath
		}
		if imp.Remote() {
			written = urlName(imp.Source)
		}
		contents := strings.HasSuffix(written, "/")
		real, err := filepath.EvalSymlinks(strings.TrimSuffix(src, "/"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, i.importError(imp, "not found (looked at %s)", src)
			}
			return nil, i.importError(imp, "%v", err)
		}
		st, err := os.Stat(real)
		if err != nil {
			return nil, i.importError(imp, "%v", err)
		}
		pl := placement{imp: imp, src: real, isDir: st.IsDir(), inImage: imp.Dest != ""}
		pl.contents = contents && pl.isDir
		if imp.Hash != "" && pl.isDir {
			return nil, i.importError(imp, "hash: applies to file imports only, and this is a directory")
		}
		if !pl.isDir && !st.Mode().IsRegular() {
			return nil, i.importError(imp, "not a regular file or directory")
		}
		name := path.Base(strings.TrimSuffix(written, "/"))
		switch {
		case imp.Dest == "" && pl.contents:
			pl.target = ImportsDir
		case imp.Dest == "":
			pl.target = path.Join(ImportsDir, name)
		case pl.contents:
			pl.target = path.Clean(imp.Dest)
		case strings.HasSuffix(imp.Dest, "/"):
			pl.target = path.Join(imp.Dest, name)
		default:
			pl.target = path.Clean(imp.Dest)
		}
		if pl.target == "/" && !pl.contents {
			return nil, i.importError(imp, "dest / would replace the root directory; write dest: / with a path ending in / to copy its contents, or a file name")
		}
		if !pl.contents {
			if other, dup := byTarget[pl.target]; dup {
				return nil, i.importError(imp, "lands on %s like the import on line %d; give one of them a dest:", pl.target, other.Line)
			}
			byTarget[pl.target] = imp
		}
		out = append(out, pl)
	}
	return out, nil
}

// entry is one file of an import as the cache key sees it: everything that
// decides what the build container sees, and nothing else (no mtimes, no
// host ownership: staged files belong to the container's root unless the
// import sets uid/gid).
type entry struct {
	Path   string `json:"path"` // relative to the placement target, "." for the top
	Type   string `json:"type"` // file, dir or symlink
	Mode   uint32 `json:"mode"` // permission bits with setuid/setgid/sticky, as in chmod
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Link   string `json:"link,omitempty"`
}

func chmodBits(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// fileMode is the mode a regular file gets when staged.
func (pl placement) fileMode(m fs.FileMode) fs.FileMode {
	if pl.imp.Mode != nil {
		return *pl.imp.Mode
	}
	return m.Perm() | m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
}

// walk visits the placement's source in lexical order, calling fn with the
// path relative to the source ("." for the top) and its Lstat info. Symlinks
// inside directories are not followed; other special files are an error.
func (pl placement) walk(fn func(rel, abs string, info fs.FileInfo) error) error {
	if !pl.isDir {
		info, err := os.Stat(pl.src)
		if err != nil {
			return err
		}
		return fn(".", pl.src, info)
	}
	return filepath.WalkDir(pl.src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(pl.src, p)
		if err != nil {
			return err
		}
		t := info.Mode().Type()
		if t != 0 && t != fs.ModeDir && t != fs.ModeSymlink {
			return fmt.Errorf("%s: unsupported file type %v (only files, directories and symlinks can be imported)", p, t)
		}
		return fn(filepath.ToSlash(rel), p, info)
	})
}

// entries lists the placement as the cache key sees it, checking hash:.
func (pl placement) entries() ([]entry, error) {
	var out []entry
	err := pl.walk(func(rel, abs string, info fs.FileInfo) error {
		e := entry{Path: rel}
		switch {
		case info.IsDir():
			e.Type, e.Mode = "dir", chmodBits(info.Mode())
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(abs)
			if err != nil {
				return err
			}
			e.Type, e.Link = "symlink", l
		default:
			sum, n, err := hashFile(abs)
			if err != nil {
				return err
			}
			e.Type, e.Mode, e.Size, e.SHA256 = "file", chmodBits(pl.fileMode(info.Mode())), n, sum
			if rel == "." && pl.imp.Hash != "" && pl.imp.Hash != sum {
				return fmt.Errorf("content has sha256 %s, but hash: says %s", sum, pl.imp.Hash)
			}
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close() // read-only
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

type sha256Writer struct{ h hash.Hash }

func newSHA256() *sha256Writer                      { return &sha256Writer{sha256.New()} }
func (w *sha256Writer) Write(b []byte) (int, error) { return w.h.Write(b) }
func (w *sha256Writer) hex() string                 { return hex.EncodeToString(w.h.Sum(nil)) }
