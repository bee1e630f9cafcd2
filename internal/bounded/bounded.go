// Package bounded reads input files and streams with a size limit applied
// while reading: a 1 GiB line, /dev/zero or an endless pipe is refused after
// at most limit+1 bytes, and a regular file whose size is already over the
// limit is refused before any byte is read. Every input vessel parses as a
// whole (system.yaml, signed manifests, certificates, keys, CRLs, recipes,
// OCI JSON from the store, layouts and registries) goes through it.
package bounded

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge is matched (errors.Is) by every *TooLargeError.
var ErrTooLarge = errors.New("input too large")

// TooLargeError names the input that went over its limit.
type TooLargeError struct {
	What  string // a file name or a description ("manifest from HOST/REPO")
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %d bytes", e.What, e.Limit)
}

func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// ReadAll reads r to its end, or fails with a *TooLargeError (naming what)
// as soon as more than limit bytes have arrived.
func ReadAll(r io.Reader, limit int64, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &TooLargeError{What: what, Limit: limit}
	}
	return b, nil
}

// ReadFile reads the file at path like os.ReadFile, limited to limit bytes
// (see ReadAll). Pipes and devices are read up to the limit; a regular
// file larger than limit is refused without reading it. Errors name path.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read-only: a close error changes nothing
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > limit {
		return nil, &TooLargeError{What: path, Limit: limit}
	}
	return ReadAll(f, limit, path)
}
