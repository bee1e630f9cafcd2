package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// InstallOptions say what Install trusts.
type InstallOptions struct {
	// Trust holds the CAs, optional CRL and product ID, and verification
	// time. Its Versions, Record and Images fields are set by Install.
	Trust trust.Options
	// ImageRepo is where the images are pulled from by digest; by default
	// the repository of the system manifest.
	ImageRepo *Reference
	// Platform is the machine the system is installed for: every image
	// must be for it (zero: this machine's). A system manifest is for one
	// architecture (docs/manifest.md).
	Platform ocispec.Platform
	// SkipBlocks leaves out the check of every layer block against its
	// verity tree after the pull (each blob's digest and size are still
	// checked as it arrives). For a caller that mounts the layers through
	// dm-verity, which checks each block as it is read: the initrd.
	SkipBlocks bool
}

// InstalledImage is one image of an installed system.
type InstalledImage struct {
	Name   string        `json:"name"` // "hostfs" or the service name
	Digest digest.Digest `json:"digest"`
	Tag    string        `json:"tag"` // its tag in the store: system/NAME:vVERSION
}

// Current is the record of the installed system manifest:
// <root>/system/current.json. The verified signed manifest it names is kept
// beside it, in <root>/system/manifests/<hex>.signed.
type Current struct {
	Product     string           `json:"product"`
	ProductName string           `json:"productName,omitempty"`
	Version     int64            `json:"version"`
	Digest      digest.Digest    `json:"digest"` // of the system manifest bytes
	Signed      string           `json:"signed"` // path of the signed manifest, relative to the store root
	Signer      string           `json:"signer"`
	Source      string           `json:"source"` // docker://HOST/REPO@<artifact digest>
	Images      []InstalledImage `json:"images"`
	InstalledAt time.Time        `json:"installedAt"`
	Previous    digest.Digest    `json:"previous,omitempty"` // the system manifest that was current before
}

// CurrentPath is where the record of the installed system lives.
func CurrentPath(root string) string { return filepath.Join(root, "system", "current.json") }

// ReadCurrent reads the installed system's record (store.ErrNotFound if
// nothing was installed).
func ReadCurrent(root string) (*Current, error) {
	b, err := bounded.ReadFile(CurrentPath(root), maxManifestSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no system installed in %s: %w", root, store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var c Current
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", CurrentPath(root), err)
	}
	return &c, nil
}

// ErrNoValidSignature means no signature attached to the manifest verified.
var ErrNoValidSignature = errors.New("no valid signature")

// Install fetches the signed system manifest ref names, verifies it
// (signature, chain to the given CAs, product, no rollback), pulls every
// image it pins (by digest, resuming partial downloads), verifies each
// image down to every verity block, and only then records the manifest as
// the store's current system and its version as accepted. Until that last
// atomic step the previous record stays current; running Install again
// after an interruption finishes the job.
func (c *Client) Install(ctx context.Context, st *store.Store, ref Reference, opts InstallOptions) (*Current, error) {
	f, err := c.FetchSigned(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("install %s: %w", ref, err)
	}
	topts := opts.Trust
	topts.Versions, topts.Record, topts.Images = trust.OpenVersions(st.Root()), false, nil
	vm, signed, err := verifyAny(f, topts)
	if err != nil {
		return nil, fmt.Errorf("install %s: %w", ref, err)
	}
	c.emit(Event{Kind: EventVerified, Digest: vm.Digest(), MediaType: ArtifactType, Ref: ref.String()})

	done, err := st.Writer() // gc waits until the images are tagged
	if err != nil {
		return nil, err
	}
	defer done()
	imgRepo := ref
	if opts.ImageRepo != nil {
		imgRepo = *opts.ImageRepo
	}
	cur := &Current{Product: vm.ProductID(), ProductName: vm.Manifest().ProductName, Version: vm.Version(), Digest: vm.Digest(),
		Signer: vm.Signer().Subject.CommonName, Source: f.Ref.String()}
	m := vm.Manifest()
	names := []string{}
	if m.Hostfs != nil {
		names = append(names, "hostfs")
	}
	for _, s := range m.Services {
		names = append(names, s.Name)
	}
	for i, img := range vm.Images() {
		if _, err := c.Copy(ctx, Registry(imgRepo.WithDigest(img.Digest)), Store(st, "")); err != nil {
			return nil, fmt.Errorf("install %s: image %s: %w", ref, names[i], err)
		}
		if !opts.SkipBlocks {
			if _, err := image.Verify(st, img.Digest.String(), nil); err != nil {
				return nil, fmt.Errorf("install %s: image %s: %w (nothing was installed)", ref, names[i], err)
			}
		}
		if err := st.CheckPlatform(ocispec.Descriptor{Digest: img.Digest}, opts.Platform); err != nil {
			return nil, fmt.Errorf("install %s: image %s: %w: %w; install the one built for this machine (nothing was installed)", ref, names[i], err, ErrOtherArch)
		}
		c.emit(Event{Kind: EventVerified, Digest: img.Digest, MediaType: img.MediaType, Ref: names[i]})
		tag := fmt.Sprintf("system/%s:v%d", strings.ToLower(names[i]), vm.Version())
		desc, err := st.Resolve(img.Digest.String())
		if err != nil {
			return nil, err
		}
		if err := st.Tag(tag, desc); err != nil {
			return nil, fmt.Errorf("install %s: tag image %s: %w", ref, names[i], err)
		}
		cur.Images = append(cur.Images, InstalledImage{Name: names[i], Digest: img.Digest, Tag: tag})
	}
	// Everything is in place: verify again with the images and record.
	topts.Images, topts.Record = st, true
	if vm, err = trust.Verify(signed, topts); err != nil {
		return nil, fmt.Errorf("install %s: %w", ref, err)
	}
	if err := recordCurrent(st.Root(), cur, signed); err != nil {
		return nil, fmt.Errorf("install %s: %w", ref, err)
	}
	return cur, nil
}

// verifyAny returns the first attached signature that verifies.
func verifyAny(f *Fetched, opts trust.Options) (*trust.VerifiedManifest, []byte, error) {
	var errs []error
	for _, s := range f.Signed {
		vm, err := trust.Verify(s, opts)
		if err == nil {
			return vm, s, nil
		}
		errs = append(errs, err)
	}
	errs = append(errs, f.SignatureErrors...)
	if len(errs) == 0 {
		return nil, nil, fmt.Errorf("%w: the manifest %s has no signature attached (publish it with 'vessel manifest push SIGNED')", ErrNoValidSignature, f.Artifact.Digest)
	}
	return nil, nil, fmt.Errorf("%w: %w", ErrNoValidSignature, errors.Join(errs...))
}

// RecordCurrent records cur as the installed system of the store at root,
// with its signed manifest, exactly as Install does (vessel boot disk uses
// it for the store it stages on a data partition).
func RecordCurrent(root string, cur *Current, signed []byte) error {
	return recordCurrent(root, cur, signed)
}

// recordCurrent writes the signed manifest, then current.json (atomic
// replace): a crash leaves either the old or the new record.
func recordCurrent(root string, cur *Current, signed []byte) error {
	dir := filepath.Join(root, "system")
	if err := os.MkdirAll(filepath.Join(dir, "manifests"), 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(root, "tmp")
	rel := filepath.Join("system", "manifests", cur.Digest.Encoded()+".signed")
	if err := atomicfile.WriteIn(tmp, filepath.Join(root, rel), signed, 0o644); err != nil {
		return err
	}
	if old, err := ReadCurrent(root); err == nil {
		cur.Previous = old.Digest
		if old.Digest == cur.Digest {
			cur.Previous = old.Previous
		}
	}
	cur.Signed = rel
	cur.InstalledAt = time.Now().UTC().Truncate(time.Second)
	b, err := json.MarshalIndent(cur, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteIn(tmp, CurrentPath(root), append(b, '\n'), 0o644)
}
