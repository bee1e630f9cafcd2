package trust

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/manifest/strictjson"
)

// Versions is the per-product record of the highest accepted manifest
// version, kept in <store root>/trust/versions.json and changed only under
// an exclusive lock (<root>/trust/versions.lock), atomically (temp file,
// fsync, rename).
type Versions struct {
	dir string
}

// VersionRecord is what is kept per product.
type VersionRecord struct {
	Version    int64     `json:"version"`
	Digest     string    `json:"digest"`
	AcceptedAt time.Time `json:"acceptedAt"`
}

type versionsFile struct {
	Products map[string]VersionRecord `json:"products"`
}

// OpenVersions returns the version record of the store at root. Nothing is
// created until a version is recorded.
func OpenVersions(storeRoot string) *Versions {
	return &Versions{dir: filepath.Join(storeRoot, "trust")}
}

// Path is the versions.json path.
func (v *Versions) Path() string { return filepath.Join(v.dir, "versions.json") }

// Get returns the record for a product (ok false if none).
func (v *Versions) Get(productID string) (VersionRecord, bool, error) {
	f, err := v.read()
	if err != nil {
		return VersionRecord{}, false, err
	}
	r, ok := f.Products[productID]
	return r, ok, nil
}

func (v *Versions) read() (*versionsFile, error) {
	b, err := bounded.ReadFile(v.Path(), maxStateSize)
	if errors.Is(err, os.ErrNotExist) {
		return &versionsFile{Products: map[string]VersionRecord{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var f versionsFile
	if err := strictjson.Unmarshal(b, &f); err != nil {
		// Fail closed: a damaged record must not reset rollback protection.
		return nil, fmt.Errorf("%s is damaged (%v): refusing to guess the highest accepted version", v.Path(), err)
	}
	if f.Products == nil {
		f.Products = map[string]VersionRecord{}
	}
	return &f, nil
}

// Record records vm as accepted for its product, under the lock, after the
// same checks as Verify (a higher version, or the same version with other
// bytes, recorded meanwhile is refused). vessel up calls it once the
// manifest's services have started, not at verification.
func (v *Versions) Record(vm *VerifiedManifest) error { return v.check(vm, true) }

// check rejects vm if a higher version was accepted for its product, or the
// same version with different bytes; with record it then records vm.
func (v *Versions) check(vm *VerifiedManifest, record bool) error {
	do := func() error {
		f, err := v.read()
		if err != nil {
			return err
		}
		pid := vm.m.Product
		r, ok := f.Products[pid]
		if ok {
			if vm.m.Version < r.Version {
				return fmt.Errorf("manifest version %d is lower than version %d already accepted for product %s (rollback or replay)", vm.m.Version, r.Version, pid)
			}
			if vm.m.Version == r.Version && r.Digest != vm.digest.String() {
				return fmt.Errorf("manifest version %d was already accepted for product %s with different content (%s); a new manifest needs a new version", vm.m.Version, pid, r.Digest)
			}
			if vm.m.Version == r.Version {
				return nil // the accepted manifest again
			}
		}
		if !record {
			return nil
		}
		f.Products[pid] = VersionRecord{Version: vm.m.Version, Digest: vm.digest.String(), AcceptedAt: now().UTC().Truncate(time.Second)}
		b, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			return err
		}
		return writeFile(v.Path(), append(b, '\n'), 0o644, true)
	}
	if !record {
		return do()
	}
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return fmt.Errorf("record accepted version: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(v.dir, "versions.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("record accepted version: %w", err)
	}
	defer lf.Close() // closing releases the lock; nothing was written to it
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("record accepted version: lock: %w", err)
	}
	return do()
}
