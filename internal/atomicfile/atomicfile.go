// Package atomicfile replaces files so that a crash or a kill at any moment
// leaves either the old content or the new, never a mix: write a temp file,
// fsync it, rename it over the target, fsync the directory. Every package
// that keeps state on disk (the store's index, trust's keys and version
// record, the TPM state) writes through here.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with data, with permissions perm. The temp file is
// created beside path.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteIn(filepath.Dir(path), path, data, perm)
}

// WriteIn is Write with the temp file created in tmpDir, which must be on
// the same filesystem as path (so that rename is atomic). Use it to keep
// half-written files out of a directory that other tools read.
func WriteIn(tmpDir, path string, data []byte, perm os.FileMode) (err error) {
	return write(tmpDir, path, data, perm, true)
}

// WriteVolatile replaces path atomically with respect to other processes
// and to a crash of this one, but does not fsync: after a power loss the
// file may be old or empty. It is for per-boot state (under /run), which a
// reboot discards anyway.
func WriteVolatile(path string, data []byte, perm os.FileMode) error {
	return write(filepath.Dir(path), path, data, perm, false)
}

func write(tmpDir, path string, data []byte, perm os.FileMode, durable bool) (err error) {
	f, err := os.CreateTemp(tmpDir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name()) // best effort: the write already failed
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if !durable {
		return nil
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making a rename in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
