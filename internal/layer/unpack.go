package layer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// OCI whiteout names inside tar layers.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// OverlayOpaqueXattr marks an opaque directory for overlayfs (as root).
const OverlayOpaqueXattr = "trusted.overlay.opaque"

// UnsafeEntryError names a tar entry that would escape the layer's root.
type UnsafeEntryError struct {
	Name   string
	Reason string
}

func (e *UnsafeEntryError) Error() string {
	return fmt.Sprintf("tar entry %q: %s", e.Name, e.Reason)
}

// Unpack extracts an OCI tar layer into the empty directory dir in overlayfs
// form: ".wh.NAME" becomes a whiteout (character device 0:0) and
// ".wh..wh..opq" sets the opaque xattr on its directory, so that the
// directory, made into a filesystem image, stacks with overlayfs exactly as
// the tar layer stacks in OCI. Ownership, modes (setuid, sticky), times,
// xattrs (from PAX SCHILY.xattr records), hardlinks, symlinks, devices and
// fifos are kept. Entries that escape the root (absolute or ".." paths,
// hardlinks outside, paths through a symlink) are refused with an
// *UnsafeEntryError. Unpack needs root (or a user namespace that maps the
// ids the layer uses) for chown and mknod.
func Unpack(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	type dirMeta struct {
		path string
		hdr  *tar.Header
	}
	var dirs []dirMeta
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		rel, err := cleanEntry(hdr.Name)
		if err != nil {
			return err
		}
		if rel == "." {
			if hdr.Typeflag == tar.TypeDir {
				dirs = append(dirs, dirMeta{dir, hdr})
			}
			continue
		}
		if err := checkParents(dir, rel, hdr.Name); err != nil {
			return err
		}
		target := filepath.Join(dir, rel)
		base := path.Base(rel)
		parent := filepath.Dir(target)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			opaque, name, err := whiteoutTarget(hdr, rel)
			if err != nil {
				return err
			}
			if opaque {
				if err := unix.Lsetxattr(parent, OverlayOpaqueXattr, []byte("y"), 0); err != nil {
					return fmt.Errorf("tar entry %q: mark opaque: %w", hdr.Name, err)
				}
				continue
			}
			wh := filepath.Join(parent, name)
			if err := os.RemoveAll(wh); err != nil {
				return fmt.Errorf("tar entry %q: whiteout: %w", hdr.Name, err)
			}
			if err := unix.Mknod(wh, unix.S_IFCHR|0o600, 0); err != nil {
				return fmt.Errorf("tar entry %q: whiteout: %w", hdr.Name, err)
			}
			continue
		}
		if hdr.Typeflag != tar.TypeDir {
			if err := os.RemoveAll(target); err != nil { // a later entry replaces an earlier one
				return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
			}
		}
		if err := writeEntry(tr, hdr, dir, target); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirMeta{target, hdr})
		}
	}
	// directory metadata last, deepest first, so adding children does not
	// disturb times and restrictive modes do not block extraction
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := applyMeta(dirs[i].path, dirs[i].hdr); err != nil {
			return err
		}
	}
	return nil
}

// whiteoutTarget validates the whiteout entry hdr (cleaned path rel, whose
// base name starts with ".wh.") before anything is removed: it reports
// whether it is the opaque marker of its directory, or else the name, in
// the entry's own directory, that it deletes. A whiteout must be a regular
// file or a hardlink (tools write empty files); its target must be one
// ordinary name: not empty, not "." or "..", no "/" and not another
// whiteout. The other ".wh..wh." names are reserved by the OCI image
// specification and refused.
func whiteoutTarget(hdr *tar.Header, rel string) (opaque bool, name string, err error) {
	base := path.Base(rel)
	if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA && hdr.Typeflag != tar.TypeLink {
		return false, "", &UnsafeEntryError{hdr.Name, fmt.Sprintf("whiteout entry of type %q; whiteouts are empty regular files", hdr.Typeflag)}
	}
	if base == whiteoutOpaque {
		return true, "", nil
	}
	if strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix) {
		return false, "", &UnsafeEntryError{hdr.Name, fmt.Sprintf("%q is a reserved whiteout name (only %q is defined)", base, whiteoutOpaque)}
	}
	name = strings.TrimPrefix(base, whiteoutPrefix)
	switch {
	case name == "":
		return false, "", &UnsafeEntryError{hdr.Name, "whiteout names no file"}
	case name == "." || name == "..":
		return false, "", &UnsafeEntryError{hdr.Name, fmt.Sprintf("whiteout of %q would act outside the directory it is in", name)}
	case strings.ContainsAny(name, "/\x00"):
		return false, "", &UnsafeEntryError{hdr.Name, "whiteout target is not a single file name"}
	}
	return false, name, nil
}

// cleanEntry normalises a tar path and refuses absolute and ".." paths.
func cleanEntry(name string) (string, error) {
	if name == "" {
		return "", &UnsafeEntryError{name, "empty name"}
	}
	if path.IsAbs(name) {
		return "", &UnsafeEntryError{name, "absolute path escapes the layer root"}
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", &UnsafeEntryError{name, `".." escapes the layer root`}
		}
	}
	return path.Clean(name), nil
}

// checkParents refuses an entry whose parent path goes through a symlink
// already extracted (which could point anywhere on the host).
func checkParents(root, rel, name string) error {
	p := root
	parts := strings.Split(path.Dir(rel), "/")
	for _, c := range parts {
		if c == "." {
			continue
		}
		p = filepath.Join(p, c)
		st, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tar entry %q: %w", name, err)
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return &UnsafeEntryError{name, fmt.Sprintf("path goes through the symlink %q", strings.TrimPrefix(p, root+"/"))}
		}
		if !st.IsDir() {
			return fmt.Errorf("tar entry %q: %q is not a directory", name, strings.TrimPrefix(p, root+"/"))
		}
	}
	return nil
}

func writeEntry(tr *tar.Reader, hdr *tar.Header, root, target string) error {
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if st, err := os.Lstat(target); err == nil && !st.IsDir() {
			if err := os.Remove(target); err != nil { // a directory replaces a file or symlink
				return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
			}
		}
		if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		return nil // metadata applied at the end
	case tar.TypeReg, tar.TypeRegA:
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
	case tar.TypeSymlink:
		if !path.IsAbs(hdr.Linkname) {
			if escapes(path.Join(path.Dir(path.Clean(hdr.Name)), hdr.Linkname)) {
				return &UnsafeEntryError{hdr.Name, fmt.Sprintf("symlink target %q points outside the layer root", hdr.Linkname)}
			}
		}
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
	case tar.TypeLink:
		rel, err := cleanEntry(hdr.Linkname)
		if err != nil {
			return &UnsafeEntryError{hdr.Name, fmt.Sprintf("hardlink target %q points outside the layer root", hdr.Linkname)}
		}
		if err := checkParents(root, rel, hdr.Name); err != nil {
			return err
		}
		src := filepath.Join(root, rel)
		if st, err := os.Lstat(src); err != nil || st.IsDir() {
			return fmt.Errorf("tar entry %q: hardlink target %q is not a file extracted before it", hdr.Name, hdr.Linkname)
		}
		if err := os.Link(src, target); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		return nil // shares the target's inode and metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknod(target, kind|mode, int(dev)); err != nil {
			return fmt.Errorf("tar entry %q: mknod: %w", hdr.Name, err)
		}
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("tar entry %q: unsupported type %q", hdr.Name, hdr.Typeflag)
	}
	return applyMeta(target, hdr)
}

// escapes reports whether a lexically cleaned relative path leaves the root.
func escapes(p string) bool {
	p = path.Clean(p)
	return p == ".." || strings.HasPrefix(p, "../")
}

// applyMeta sets owner, mode, xattrs and times, in that order: chown clears
// setuid bits and security.capability.
func applyMeta(p string, hdr *tar.Header) error {
	if err := os.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("tar entry %q: chown: %w", hdr.Name, err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Chmod(p, uint32(hdr.Mode&0o7777)); err != nil {
			return fmt.Errorf("tar entry %q: chmod: %w", hdr.Name, err)
		}
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Lsetxattr(p, name, []byte(v), 0); err != nil {
				return fmt.Errorf("tar entry %q: xattr %s: %w", hdr.Name, name, err)
			}
		}
	}
	mt := hdr.ModTime
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("tar entry %q: times: %w", hdr.Name, err)
	}
	return nil
}
