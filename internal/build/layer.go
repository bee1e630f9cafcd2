package build

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/recipe"
)

// runtimeMountPoints are the directories the OCI runtime creates in the
// root filesystem when they are missing (for the kernel filesystems every
// container gets and for the /stacker and /vessel binds). A build must not
// add them to the layer: the ones missing from the base are removed from
// the upper directory after the run, deepest first.
var runtimeMountPoints = []string{
	"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
	"/stacker", "/vessel",
}

// buildLayer stages img's imports, runs its script on the mounted base
// with a writable upper directory and makes the upper directory a layer in
// the store.
//
// empty reports that the run changed nothing on a base with layers: then
// no layer is made (a scratch base always gets one, even an empty one: a
// stored image has at least one layer).
func (b *builder) buildLayer(ctx context.Context, i int, img *recipe.Image, base *mount.Image, src *sources) (_ ocispec.Descriptor, empty bool, _ error) {
	fail := func(phase string, line int, err error) error {
		return b.stepError(i, img, phase, line, err)
	}
	tmp, err := b.tempDir("build-*")
	if err != nil {
		return ocispec.Descriptor{}, false, fail("prepare", 0, err)
	}
	defer os.RemoveAll(tmp)
	mtime, maxKept := time.Unix(0, 0), time.Time{}
	if b.opt.SourceDateEpoch != nil {
		mtime = time.Unix(*b.opt.SourceDateEpoch, 0)
		maxKept = mtime
	}
	st, err := recipe.Stage(img, filepath.Join(tmp, "stage"), recipe.StageOptions{Resolve: src.resolve, MTime: mtime, ImageMTimeMax: maxKept})
	if err != nil {
		return ocispec.Descriptor{}, false, fail("imports", img.KeyLine("imports"), err)
	}
	// The source images are no longer needed once their files are copied.
	if err := src.close(); err != nil {
		return ocispec.Descriptor{}, false, fail("imports", img.KeyLine("imports"), err)
	}
	// This process is root of the build's user namespace (the real root,
	// or mapped root in a rootless build): chown applies there.
	for _, c := range st.Chowns {
		if err := os.Lchown(c.HostPath, c.UID, c.GID); err != nil {
			return ocispec.Descriptor{}, false, fail("imports", img.KeyLine("imports"), fmt.Errorf("chown %s: %w", c.ContainerPath, err))
		}
	}
	upper := filepath.Join(tmp, "upper")
	var missing []string
	points := append(slices.Clone(runtimeMountPoints), bindMountPoints(img)...)
	prepare := func(rootfs string) error {
		missing = missing[:0]
		for _, p := range points {
			if _, err := os.Lstat(filepath.Join(rootfs, p)); errors.Is(err, fs.ErrNotExist) {
				missing = append(missing, p)
			}
		}
		if err := copyTree(st.Rootfs, rootfs); err != nil {
			return fmt.Errorf("copy imports with dest: into the image: %w", err)
		}
		return checkInterpreter(img, rootfs, st.Dir)
	}
	id := containerID(img.Name)
	if script := img.Script(); script != "" {
		if err := binfmt.Check(imagePlatform(img).Architecture); err != nil {
			// a foreign-architecture script runs through qemu-user
			line := img.KeyLine("arch")
			if line == 0 {
				line = img.KeyLine("run")
			}
			return ocispec.Descriptor{}, false, fail("run", line, err)
		}
		l, err := b.launcher()
		if err != nil {
			return ocispec.Descriptor{}, false, fail("run", img.KeyLine("run"), err)
		}
		var binds []ociruntime.Bind
		for _, m := range st.Mounts {
			binds = append(binds, ociruntime.Bind{Source: m.Source, Target: m.Destination, ReadOnly: m.ReadOnly})
		}
		for _, hb := range img.Binds { // stacker's binds: read-write, never in the layer
			binds = append(binds, ociruntime.Bind{Source: hb.Source, Target: hb.Dest})
		}
		baseEnv := base.Config().Config.Env
		// One pipe for stdout and stderr keeps their order as written.
		pr, pw, err := os.Pipe()
		if err != nil {
			return ocispec.Descriptor{}, false, fail("run", img.KeyLine("run"), err)
		}
		tail := &tailWriter{max: tailLines}
		copied := make(chan struct{})
		go func() {
			defer close(copied)
			io.Copy(io.MultiWriter(b.opt.Output, tail), pr) // output errors must not stop the build
			pr.Close()
		}()
		b.event(i, StatusRun, "", "")
		code, err := l.Run(ctx, container.Spec{
			ID:    id,
			Image: base,
			Config: ociruntime.Config{
				Args:    []string{recipe.ScriptPath},
				Env:     b.runEnv(img, baseEnv),
				Cwd:     "/",
				User:    "0:0",
				Network: ociruntime.NetworkNone,
				Mounts:  binds,
			},
			Upper:   upper,
			Prepare: prepare,
		}, ociruntime.Stdio{Stdout: pw, Stderr: pw})
		pw.Close()
		<-copied
		if err != nil || code != 0 {
			e := fail("run", img.KeyLine("run"), err).(*StepError)
			e.ExitCode, e.Tail = code, tail.lines()
			if err == nil {
				e.Err = nil
			}
			return ocispec.Descriptor{}, false, e
		}
	} else {
		target := filepath.Join(tmp, "rootfs")
		if _, err := b.opt.Mounts.Mount(ctx, base, id, target, mount.Self(), mount.Options{Writable: true, Upper: upper}); err != nil {
			return ocispec.Descriptor{}, false, fail("imports", img.KeyLine("imports"), err)
		}
		err := prepare(target)
		if uerr := b.opt.Mounts.Unmount(id); uerr != nil {
			err = errors.Join(err, uerr)
		}
		if err != nil {
			return ocispec.Descriptor{}, false, fail("imports", img.KeyLine("imports"), err)
		}
		missing = nil // no runtime ran
	}
	dir := filepath.Join(upper, "upper")
	opaque, err := cleanUpper(dir, missing)
	if err != nil {
		return ocispec.Descriptor{}, false, fail("layer", 0, err)
	}
	if err := b.flattenOpaque(ctx, base, dir, opaque, id); err != nil {
		return ocispec.Descriptor{}, false, fail("layer", 0, err)
	}
	if base.Layers() > 0 {
		if ents, err := os.ReadDir(dir); err != nil {
			return ocispec.Descriptor{}, false, fail("layer", 0, err)
		} else if len(ents) == 0 {
			return ocispec.Descriptor{}, true, nil
		}
	}
	b.event(i, StatusLayer, "", "")
	built, err := layer.Build(ctx, dir, filepath.Join(tmp, "blob"), layer.BuildOptions{
		Format: b.opt.Format, SourceDateEpoch: b.opt.SourceDateEpoch, Written: b.opt.Written, Hashed: b.opt.Hashed,
	})
	if err != nil {
		return ocispec.Descriptor{}, false, fail("layer", 0, err)
	}
	if err := b.s.PutBlobFile(built.Path, built.Descriptor.Digest); err != nil {
		return ocispec.Descriptor{}, false, fail("layer", 0, err)
	}
	return built.Descriptor, false, nil
}

// runEnv is the run script's environment: img.RunEnv, plus
// SOURCE_DATE_EPOCH when the build has one (as stacker passes it on), so
// that tools in the script can be reproducible too. A value the recipe
// sets itself wins.
func (b *builder) runEnv(img *recipe.Image, baseEnv []string) []string {
	env := img.RunEnv(baseEnv)
	if b.sde != "" && !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "SOURCE_DATE_EPOCH=") }) {
		env = append(env, "SOURCE_DATE_EPOCH="+b.sde)
	}
	return env
}

// bindMountPoints are the destinations of img's host binds and their
// parents: the runtime creates the ones the base lacks, and cleanUpper
// removes them again when they are still empty.
func bindMountPoints(img *recipe.Image) []string {
	var out []string
	for _, b := range img.Binds {
		for p := b.Dest; p != "/" && p != "."; p = filepath.Dir(p) {
			out = append(out, p)
		}
	}
	return out
}

// containerID names a build container: unique per build, valid as a
// runtime id whatever the image is called.
func containerID(name string) string {
	var sb strings.Builder
	for _, c := range strings.ToLower(name) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			sb.WriteRune(c)
		}
		if sb.Len() >= 40 {
			break
		}
	}
	r := make([]byte, 4)
	rand.Read(r)
	return "build-" + sb.String() + "-" + hex.EncodeToString(r)
}

// cleanUpper turns the overlay upper directory into a layer tree: the
// mount points the runtime created (missing, container paths) are removed
// when they are still empty directories, and overlayfs's private xattrs
// (origin, impure, ...) are dropped. Whiteouts (0:0 character devices)
// stay; the opaque directories are returned (relative to dir) for
// flattenOpaque.
func cleanUpper(dir string, missing []string) (opaque []string, err error) {
	ms := slices.Clone(missing)
	slices.SortFunc(ms, func(a, b string) int { return len(b) - len(a) })
	for _, p := range ms {
		full := filepath.Join(dir, p)
		fi, err := os.Lstat(full)
		if err != nil {
			continue
		}
		if !fi.IsDir() {
			// the runtime's mount point for a file bind: an empty file
			if fi.Mode().IsRegular() && fi.Size() == 0 {
				if err := os.Remove(full); err != nil {
					return nil, fmt.Errorf("remove mount point %s from the layer: %w", p, err)
				}
			}
			continue
		}
		if err := os.Remove(full); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("remove mount point %s from the layer: %w", p, err)
		}
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		isOpaque, err := stripOverlayXattrs(p)
		if err != nil {
			return err
		}
		if isOpaque && d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			opaque = append(opaque, rel)
		}
		return nil
	})
	return opaque, err
}

// flattenOpaque replaces each opaque directory marker of the upper
// directory by a whiteout for every entry the base has there and the
// upper directory does not. Stacked on the same base (and a layer is only
// ever used on the base its cache key names) that means the same thing,
// and it needs no xattr: a root build marks opaque directories with
// trusted.overlay.opaque, a rootless one (overlay with userxattr) with
// user.overlay.opaque, and mksquashfs cannot be told to write the trusted
// one from a user namespace. Whiteouts are plain 0:0 character devices
// that both can create, so root and rootless builds give the same layer.
func (b *builder) flattenOpaque(ctx context.Context, base *mount.Image, dir string, opaque []string, id string) (err error) {
	if len(opaque) == 0 {
		return nil
	}
	var lower string
	if base.Layers() > 0 {
		tmp, err := b.tempDir("base-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		lower = filepath.Join(tmp, "root")
		if _, err := b.opt.Mounts.Mount(ctx, base, id+"-base", lower, mount.Self(), mount.Options{}); err != nil {
			return fmt.Errorf("mount the base to resolve opaque directories: %w", err)
		}
		defer func() {
			if uerr := b.opt.Mounts.Unmount(id + "-base"); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}()
	}
	for _, rel := range opaque {
		p := filepath.Join(dir, rel)
		if lower != "" {
			ents, err := os.ReadDir(filepath.Join(lower, rel))
			if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
				return err
			}
			for _, e := range ents {
				w := filepath.Join(p, e.Name())
				if _, err := os.Lstat(w); err == nil {
					continue // replaced in the upper directory
				}
				if err := unix.Mknod(w, unix.S_IFCHR, 0); err != nil {
					return fmt.Errorf("whiteout %s: %w", w, err)
				}
			}
		}
		// (a user namespace may not touch trusted.*, nor see it: EPERM)
		for _, x := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
			if err := unix.Lremovexattr(p, x); err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("remove %s from %s: %w", x, p, err)
			}
		}
	}
	return nil
}

// stripOverlayXattrs removes overlayfs's xattrs from p, except the opaque
// marker, and reports whether p has that.
func stripOverlayXattrs(p string) (opaque bool, err error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return false, nil
		}
		return false, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return false, err
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if !strings.HasPrefix(name, "trusted.overlay.") && !strings.HasPrefix(name, "user.overlay.") {
			continue
		}
		if strings.HasSuffix(name, ".overlay.opaque") {
			opaque = true
			continue
		}
		if err := unix.Lremovexattr(p, name); err != nil && !errors.Is(err, unix.ENODATA) {
			return false, fmt.Errorf("remove xattr %s from %s: %w", name, p, err)
		}
	}
	return opaque, nil
}

// copyTree copies the staged tree src (dest: imports) into the mounted
// root dst, keeping owners, modes, symlinks and times. Directories that
// already exist in dst keep their own owner and mode (only missing parents
// are created); anything else in the way is replaced.
func copyTree(src, dst string) error {
	type dirTime struct {
		path string
		fi   fs.FileInfo
	}
	var dirs []dirTime
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		old, oerr := os.Lstat(target)
		if fi.IsDir() {
			if oerr == nil && old.IsDir() {
				return nil
			}
			if oerr == nil {
				if err := os.RemoveAll(target); err != nil {
					return err
				}
			}
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{target, fi})
			return nil
		}
		if oerr == nil {
			if err := os.RemoveAll(target); err != nil {
				return err
			}
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(l, target); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if err := copyFile(p, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: cannot import a %s", rel, fi.Mode().Type())
		}
		return setMeta(target, fi)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- { // deepest first
		if err := setMeta(dirs[i].path, dirs[i].fi); err != nil {
			return err
		}
	}
	return nil
}

// setMeta gives p the owner, mode and mtime of fi (mode after chown, which
// clears setuid bits).
func setMeta(p string, fi fs.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		if err := os.Chmod(p, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(fi.ModTime().UnixNano()), unix.NsecToTimespec(fi.ModTime().UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close() // read-only
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkInterpreter fails early, and says what to do, when the #! line of
// the run script names a program that the container will not have.
func checkInterpreter(img *recipe.Image, rootfs, stageDir string) error {
	script := img.Script()
	if script == "" {
		return nil
	}
	first, _, _ := strings.Cut(strings.TrimPrefix(script, "#!"), "\n")
	fields := strings.Fields(first)
	if len(fields) == 0 {
		return fmt.Errorf("the script's #! line names no interpreter")
	}
	interp := fields[0]
	root := rootfs
	rel := interp
	for _, m := range []string{"/stacker/", "/vessel/"} {
		if strings.HasPrefix(interp, m) {
			root, rel = filepath.Join(stageDir, strings.Trim(m, "/")), strings.TrimPrefix(interp, m)
		}
	}
	if p, err := inRoot(root, rel); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return nil
		}
	}
	hint := ""
	if img.From.Type == recipe.Scratch {
		hint = ": an image from scratch has no shell; import a static one (busybox) and start the script with \"#!/stacker/imports/busybox sh\""
	}
	return fmt.Errorf("the script's interpreter %s is not in the image%s", interp, hint)
}
