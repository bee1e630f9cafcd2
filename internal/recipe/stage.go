package recipe

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ScriptPath is where the build container finds the run script (Image.Script)
// after Stage; the executor runs it as the container's only process.
const ScriptPath = "/stacker/.vessel-run.sh"

// StageOptions change how Stage copies imports.
type StageOptions struct {
	// Resolve finds stacker:// imports; see Resolver.
	Resolve Resolver
	// MTime is the modification time of every staged file and directory
	// but dest: imports: the cache key ignores mtimes, so staging makes
	// them all equal. Use SOURCE_DATE_EPOCH when set; the zero value means
	// the Unix epoch.
	MTime time.Time
	// ImageMTimeMax bounds the mtimes of dest: imports, which keep their
	// source's (as stacker's do): none is later (SOURCE_DATE_EPOCH, when
	// set; zero: no bound).
	ImageMTimeMax time.Time
}

// Staged is what Stage produced for one image build.
//
// Layout under Dir:
//
//	stacker/imports/...      imports without dest (bind at /stacker, read-only)
//	stacker/.vessel-run.sh   the run script, mode 0755, if the image has one
//	stacker/<name> -> imports/<name>   only for legacy `import:` (stacker put those in /stacker)
//	vessel/imports -> ../stacker/imports   (bind at /vessel: /vessel/imports shows the same files)
//	rootfs/...               imports with dest, laid out from the image root
//
// The rootfs tree belongs in the new layer: the executor copies it into the
// container's writable upper directory before running the script, creating
// only the parent directories the base lacks. The stacker and vessel trees
// must not end up in the layer, nor the empty mount points the runtime
// creates for them.
type Staged struct {
	Dir     string
	Imports string // Dir/stacker/imports
	Rootfs  string // Dir/rootfs
	// Script is the host path of the run script, "" when the image has no run.
	Script string
	// Mounts are the binds the build container needs, in order.
	Mounts []Bind
	// Chowns are ownership changes the import uid:/gid: keys ask for, to be
	// applied as root of the build's user namespace (Stage runs as the
	// invoking user and does not chown, so root and rootless builds stage
	// identical trees). A staged file without an entry here belongs to the
	// container's root.
	Chowns []Chown
}

// Bind is a bind mount of a host directory into the build container.
type Bind struct {
	Source      string // host path
	Destination string // container path
	ReadOnly    bool
}

// Chown is one ownership change; -1 leaves the uid or gid as it is.
type Chown struct {
	HostPath      string
	ContainerPath string
	UID, GID      int
}

// Stage copies img's imports under dir (which must not exist yet, or be
// empty) and writes its run script there. Modes are kept (or replaced by
// the import's mode:), symlinks inside imported directories are copied as
// symlinks. dest: imports keep their mtimes (at most opts.ImageMTimeMax);
// all other mtimes are set to opts.MTime. On error dir is removed.
// The caller removes dir after the build.
func Stage(img *Image, dir string, opts StageOptions) (st *Staged, err error) {
	pls, err := img.placements(opts.Resolve)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("stage imports of %s: %w", img.Name, err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		if err == nil {
			err = errors.New("directory is not empty")
		}
		return nil, fmt.Errorf("stage imports of %s in %s: %w", img.Name, dir, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir) // best effort: the staging already failed
		}
	}()
	st = &Staged{
		Dir:     dir,
		Imports: filepath.Join(dir, "stacker", "imports"),
		Rootfs:  filepath.Join(dir, "rootfs"),
		Mounts: []Bind{
			{Source: filepath.Join(dir, "stacker"), Destination: "/stacker", ReadOnly: true},
			{Source: filepath.Join(dir, "vessel"), Destination: "/vessel", ReadOnly: true},
		},
	}
	s := &stager{mtime: opts.MTime, maxKept: opts.ImageMTimeMax, kept: map[string]time.Time{}}
	if s.mtime.IsZero() {
		s.mtime = time.Unix(0, 0)
	}
	for _, d := range []string{st.Imports, st.Rootfs, filepath.Join(dir, "vessel")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Symlink("../stacker/imports", filepath.Join(dir, "vessel", "imports")); err != nil {
		return nil, err
	}
	for _, pl := range pls {
		hostTarget := filepath.Join(st.Imports, strings.TrimPrefix(pl.target, ImportsDir))
		if pl.inImage {
			hostTarget = filepath.Join(st.Rootfs, pl.target)
		}
		if err := s.copy(pl, hostTarget); err != nil {
			return nil, img.importError(pl.imp, "%v", err)
		}
		if pl.imp.UID != nil || pl.imp.GID != nil {
			uid, gid := -1, -1
			if pl.imp.UID != nil {
				uid = *pl.imp.UID
			}
			if pl.imp.GID != nil {
				gid = *pl.imp.GID
			}
			err := pl.walk(func(rel, _ string, _ fs.FileInfo) error {
				st.Chowns = append(st.Chowns, Chown{HostPath: filepath.Join(hostTarget, rel), ContainerPath: path.Join(pl.target, rel), UID: uid, GID: gid})
				return nil
			})
			if err != nil {
				return nil, img.importError(pl.imp, "%v", err)
			}
		}
	}
	if img.LegacyImport {
		ents, err := os.ReadDir(st.Imports)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.Name() == "imports" || e.Name() == path.Base(ScriptPath) {
				return nil, fmt.Errorf("stage imports of %s: an import named %q cannot also appear in /stacker", img.Name, e.Name())
			}
			l := filepath.Join(dir, "stacker", e.Name())
			if err := os.Symlink("imports/"+e.Name(), l); err != nil {
				return nil, err
			}
			s.links = append(s.links, l)
		}
	}
	if script := img.Script(); script != "" {
		st.Script = filepath.Join(dir, "stacker", path.Base(ScriptPath))
		if err := os.WriteFile(st.Script, []byte(script), 0o755); err != nil {
			return nil, err
		}
		if err := os.Chmod(st.Script, 0o755); err != nil { // whatever the umask
			return nil, err
		}
		s.files = append(s.files, st.Script)
	}
	s.links = append(s.links, filepath.Join(dir, "vessel", "imports"))
	s.dirs = append(s.dirs, dirMode{filepath.Join(dir, "vessel"), 0o755}, dirMode{filepath.Join(dir, "stacker"), 0o755},
		dirMode{st.Imports, 0o755}, dirMode{st.Rootfs, 0o755}, dirMode{dir, 0o755})
	if err := s.finish(); err != nil {
		return nil, fmt.Errorf("stage imports of %s: %w", img.Name, err)
	}
	return st, nil
}

type dirMode struct {
	path string
	mode fs.FileMode
}

type stager struct {
	mtime   time.Time
	maxKept time.Time            // zero: no bound
	kept    map[string]time.Time // paths that keep their source's mtime
	dirs    []dirMode            // to chmod and stamp after their contents are written
	files   []string
	links   []string
}

// copy copies one placement to hostTarget.
func (s *stager) copy(pl placement, hostTarget string) error {
	if err := s.mkParents(hostTarget); err != nil {
		return err
	}
	return pl.walk(func(rel, abs string, info fs.FileInfo) error {
		dst := filepath.Join(hostTarget, rel)
		if pl.inImage { // part of the image: keeps its time, as stacker's copy does
			t := info.ModTime()
			if !s.maxKept.IsZero() && t.After(s.maxKept) {
				t = s.maxKept
			}
			s.kept[dst] = t
		}
		if pl.contents && rel == "." {
			// contents of a directory: merge into an existing target
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
			s.dirs = append(s.dirs, dirMode{dst, info.Mode().Perm() | info.Mode()&(fs.ModeSetgid|fs.ModeSticky)})
			return nil
		}
		if _, err := os.Lstat(dst); err == nil {
			return fmt.Errorf("%s is written by two imports", dst)
		}
		switch {
		case info.IsDir():
			if err := os.Mkdir(dst, 0o700); err != nil {
				return err
			}
			s.dirs = append(s.dirs, dirMode{dst, info.Mode().Perm() | info.Mode()&(fs.ModeSetgid|fs.ModeSticky)})
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(abs)
			if err != nil {
				return err
			}
			if err := os.Symlink(l, dst); err != nil {
				return err
			}
			s.links = append(s.links, dst)
		default:
			sum, err := copyFile(abs, dst, pl.fileMode(info.Mode()))
			if err != nil {
				return err
			}
			if rel == "." && pl.imp.Hash != "" && sum != pl.imp.Hash {
				return fmt.Errorf("content has sha256 %s, but hash: says %s", sum, pl.imp.Hash)
			}
			s.files = append(s.files, dst)
		}
		return nil
	})
}

// mkParents creates the missing parents of p as 0755 directories.
func (s *stager) mkParents(p string) error {
	var missing []string
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	slices.Reverse(missing)
	for _, d := range missing {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
		s.dirs = append(s.dirs, dirMode{d, 0o755})
	}
	return nil
}

// finish sets final directory modes (deepest first, so a read-only
// directory is filled before it becomes read-only) and every mtime.
func (s *stager) finish() error {
	stamp := func(p string) error {
		t := s.mtime
		if k, ok := s.kept[p]; ok {
			t = k
		}
		ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("set mtime of %s: %w", p, err)
		}
		return nil
	}
	for _, p := range append(s.files, s.links...) {
		if err := stamp(p); err != nil {
			return err
		}
	}
	dirs := slices.Clone(s.dirs)
	slices.SortStableFunc(dirs, func(a, b dirMode) int { return len(b.path) - len(a.path) })
	for _, d := range dirs {
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
		if err := stamp(d.path); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies a regular file and returns its sha256.
func copyFile(src, dst string, mode fs.FileMode) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close() // read-only
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	h := newSHA256()
	_, err = io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		return "", err
	}
	return h.hex(), nil
}
