package caps

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Cgroup is a cgroup v2 directory made for one learning session: every
// container vessel starts under it is traced, and Kill ends them all.
type Cgroup struct {
	Dir  string // absolute path in the cgroup2 file system
	Path string // path from the cgroup2 root, e.g. /vessel-caps-1a2b3c
	ID   uint64 // cgroup id: the directory's inode number
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted:
// /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts... - fstype source superopts
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return pf[4], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	return "", errors.New("no cgroup2 file system is mounted (need cgroup v2, alone or hybrid)")
}

// NewCgroup creates a fresh cgroup named prefix-RANDOM at the top of the
// cgroup2 hierarchy.
func NewCgroup(prefix string) (*Cgroup, error) {
	mnt, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 6)
	rand.Read(b)
	name := prefix + "-" + hex.EncodeToString(b)
	dir := filepath.Join(mnt, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return &Cgroup{Dir: dir, Path: "/" + name, ID: fi.Sys().(*syscall.Stat_t).Ino}, nil
}

// Kill kills every process in the cgroup and below it (cgroup.kill, Linux
// 5.14).
func (c *Cgroup) Kill() error {
	if err := os.WriteFile(filepath.Join(c.Dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", c.Path, err)
	}
	return nil
}

// Remove kills what is left in the cgroup and removes it with every
// cgroup below it (the runtime normally removes its own).
func (c *Cgroup) Remove() error {
	var last error
	for i := 0; i < 50; i++ {
		if err := removeTree(c.Dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		} else {
			last = err
		}
		if i == 0 {
			_ = c.Kill()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", c.Path, last)
}

// removeTree removes cgroup directories bottom-up (cgroup directories are
// removed with rmdir, their files cannot be unlinked).
func removeTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return syscall.Rmdir(dir)
}
