package build

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/store"
)

// CleanOptions control Clean.
type CleanOptions struct {
	// All also removes the downloads cache (<root>/build-downloads): http(s)
	// imports and tar bases are then downloaded again, and a build whose
	// pinned files were there no longer works offline.
	All bool
	// MountInfo is the mount table read to skip directories still mounted
	// (default /proc/self/mountinfo).
	MountInfo string
}

// CleanResult is what Clean removed.
type CleanResult struct {
	// Removed are the paths removed, relative to the store root.
	Removed []string `json:"removed"`
	// Bytes is the size of the files removed (before GC).
	Bytes int64 `json:"bytes"`
	// Skipped are build directories left in place because something is
	// mounted below them (a build that is still running elsewhere, or one
	// killed mid-way: unmount, or reboot, and clean again).
	Skipped []string `json:"skipped,omitempty"`
	// GC is the store collection run afterwards: the blobs only the build
	// cache kept (untagged images, build_only images, earlier layers).
	GC store.GCResult `json:"gc"`
}

// buildTempPrefixes name the directories builds make in <root>/tmp.
var buildTempPrefixes = []string{"build-", "src-", "base-", "labels-", "convert-", "layer-", "tar-"}

// Clean removes what builds keep between runs, as stacker clean removes
// its roots and cache: the build cache (recipe.CacheFile: the next build
// runs every script again), the docker bases pulled for builds (BasesDir),
// the downloads' temporary files and the build directories a killed build
// left in <root>/tmp. With All, the downloads themselves (DownloadsDir)
// go too. Tagged images are never touched. It waits for running builds
// (store.Exclusive) and keeps them off while it removes, then runs
// Store.GC so the blobs that only the cache referenced are freed.
func Clean(s *store.Store, opt CleanOptions) (*CleanResult, error) {
	if opt.MountInfo == "" {
		opt.MountInfo = "/proc/self/mountinfo"
	}
	res := &CleanResult{Removed: []string{}}
	root := s.Root()
	done, err := s.Exclusive()
	if err != nil {
		return nil, fmt.Errorf("clean: %w", err)
	}
	mounted, err := mountPoints(opt.MountInfo)
	if err != nil {
		done()
		return nil, fmt.Errorf("clean: %w", err)
	}
	var errs []error
	remove := func(rel string) {
		p := filepath.Join(root, rel)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return
		}
		for _, m := range mounted {
			if m == p || strings.HasPrefix(m, p+"/") {
				res.Skipped = append(res.Skipped, rel)
				return
			}
		}
		size := treeSize(p)
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("clean: remove %s: %w", p, err))
			return
		}
		res.Removed = append(res.Removed, rel)
		res.Bytes += size
	}
	remove(recipe.CacheFile)
	remove(BasesDir)
	if opt.All {
		remove(DownloadsDir)
	} else {
		remove(filepath.Join(DownloadsDir, "tmp"))
	}
	if ents, err := os.ReadDir(filepath.Join(root, "tmp")); err == nil {
		for _, e := range ents {
			for _, pre := range buildTempPrefixes {
				if strings.HasPrefix(e.Name(), pre) && e.IsDir() {
					remove(filepath.Join("tmp", e.Name()))
					break
				}
			}
		}
	}
	done()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	gc, err := s.GC()
	res.GC = gc
	if err != nil {
		return res, fmt.Errorf("clean: %w", err)
	}
	return res, nil
}

// treeSize is the size of the regular files under p (0 when unreadable).
func treeSize(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// mountPoints lists the mount points of a mountinfo file.
func mountPoints(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
