package update

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
)

// StageOptions say what Stage trusts and where missing images come from.
type StageOptions struct {
	// Trust holds the CAs, CRL, product ID and time; Versions, Record and
	// Images are set by Stage (the store's anti-rollback record, no
	// recording, the store).
	Trust trust.Options
	// Client copies missing images from From; nil when every image must
	// already be in the store.
	Client *registry.Client
	// From is where the image with digest d is copied from when the store
	// lacks it: a registry repository or another store, by digest.
	From func(d digest.Digest) registry.Endpoint
	// Platform every image must be for (zero: this machine's).
	Platform ocispec.Platform
	// Source is recorded in the slot (where the manifest came from).
	Source string
	// UKI is a new signed kernel image for the slot (nil: the slot boots
	// the default slot's UKI); it needs Firmware.
	UKI      []byte
	Firmware *Firmware
}

// StagedImage is one image of a staged manifest.
type StagedImage struct {
	Name    string        `json:"name"`
	Digest  digest.Digest `json:"digest"`
	Tag     string        `json:"tag"`
	Pulled  bool          `json:"pulled"`  // it was not in the store
	Bytes   int64         `json:"bytes"`   // its size (manifest, config, layers)
	Fetched int64         `json:"fetched"` // bytes transferred for it
}

// Staged is the result of Stage.
type Staged struct {
	Slot    string        `json:"slot"`
	Version int64         `json:"version"`
	Digest  digest.Digest `json:"digest"`
	Images  []StagedImage `json:"images"`
	// Fetched is the bytes transferred, Total the size of every image of
	// the manifest (what a full install would move).
	Fetched   int64           `json:"fetchedBytes"`
	Total     int64           `json:"totalBytes"`
	Untagged  []string        `json:"untagged,omitempty"`
	GC        *store.GCResult `json:"gc,omitempty"`
	TriesLeft int             `json:"triesLeft"`
	// UKI is the slot's kernel image; BootNext the boot entry armed for
	// its one-shot trial boot ("" when the trial boots the default's
	// UKI); RemovedUKIs the staged UKIs no slot references any more.
	UKI         *UKI     `json:"uki,omitempty"`
	BootNext    string   `json:"bootNext,omitempty"`
	RemovedUKIs []string `json:"removedUKIs,omitempty"`
}

// Stage verifies the signed system manifest as the initrd will (CA chain,
// product, version not below the accepted one, then every image in the
// store, each down to every verity block), fetching only the images the
// store lacks, writes it beside the installed ones, and arms a one-shot
// trial boot of it in the inactive slot: the single atomic step is the
// replacement of the slot record. A manifest of another product, a lower
// version, or an image that fails verification is refused and the slots
// stay as they were. Afterwards the images no slot references lose their
// system/ tags and the store is garbage-collected.
func Stage(ctx context.Context, st *store.Store, signed []byte, opts StageOptions) (*Staged, error) {
	root := st.Root()
	unlock, err := lock(root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	state, _, err := Read(root)
	if err != nil {
		return nil, fmt.Errorf("read the installed slots: %w", err)
	}
	topts := opts.Trust
	versions := trust.OpenVersions(root)
	topts.Versions, topts.Record, topts.Images = versions, false, nil
	vm, err := trust.Verify(signed, topts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w (the slots are unchanged)", ErrRefused, err)
	}
	accepted, err := Accepted(versions, state.Product)
	if err != nil {
		return nil, err
	}
	m := vm.Manifest()
	if m.Hostfs == nil {
		return nil, fmt.Errorf("%w: system manifest version %d names no host image (hostfs): the initrd could not boot it (the slots are unchanged)", ErrRefused, vm.Version())
	}
	sl := &Slot{Product: vm.ProductID(), Version: vm.Version(), Digest: vm.Digest(), Signer: vm.Signer().Subject.CommonName,
		Source: opts.Source, Signed: filepath.Join("system", "manifests", vm.Digest().Encoded()+".signed"), StagedAt: now().UTC().Truncate(1e9)}
	// Refusals of the state machine come before anything is fetched.
	probe := state.clone()
	if _, err := probe.Stage(sl, accepted, now()); err != nil {
		return nil, fmt.Errorf("%w (the slots are unchanged)", err)
	}
	fw := opts.Firmware
	if opts.UKI != nil {
		if fw == nil {
			return nil, fmt.Errorf("%w: a new UKI needs the ESP and the UEFI variables (the slots are unchanged)", ErrRefused)
		}
		if _, err := fw.checkUKI(opts.UKI, state.Product); err != nil {
			return nil, fmt.Errorf("%w: UKI: %w (the slots are unchanged)", ErrRefused, err)
		}
	}

	done, err := st.Writer() // gc waits until the images are tagged
	if err != nil {
		return nil, err
	}
	res := &Staged{Version: vm.Version(), Digest: vm.Digest()}
	names := []string{"hostfs"}
	for _, s := range m.Services {
		names = append(names, s.Name)
	}
	for i, img := range vm.Images() {
		si := StagedImage{Name: names[i], Digest: img.Digest}
		if !present(st, img.Digest) {
			if opts.Client == nil || opts.From == nil {
				done()
				return nil, fmt.Errorf("%w: image %s (%s) is not in the store and no source to fetch it from was given (the slots are unchanged)", ErrRefused, names[i], img.Digest)
			}
			r, err := opts.Client.Copy(ctx, opts.From(img.Digest), registry.Store(st, ""))
			if err != nil {
				done()
				return nil, fmt.Errorf("fetch image %s (%s): %w (the slots are unchanged)", names[i], img.Digest, err)
			}
			si.Pulled, si.Fetched = true, r.Transferred
		}
		if _, err := image.Verify(st, img.Digest.String(), nil); err != nil {
			done()
			return nil, fmt.Errorf("%w: image %s: %w (the slots are unchanged)", ErrRefused, names[i], err)
		}
		if err := st.CheckPlatform(ocispec.Descriptor{Digest: img.Digest}, opts.Platform); err != nil {
			done()
			return nil, fmt.Errorf("%w: image %s: %w: this system manifest is for another architecture (the slots are unchanged)", ErrRefused, names[i], err)
		}
		if si.Bytes, err = imageSize(st, img.Digest); err != nil {
			done()
			return nil, err
		}
		si.Tag = fmt.Sprintf("system/%s:v%d", strings.ToLower(names[i]), vm.Version())
		desc, err := st.Resolve(img.Digest.String())
		if err != nil {
			done()
			return nil, err
		}
		if err := st.Tag(si.Tag, desc); err != nil {
			done()
			return nil, fmt.Errorf("tag image %s: %w", names[i], err)
		}
		res.Images = append(res.Images, si)
		res.Fetched += si.Fetched
		res.Total += si.Bytes
		sl.Images = append(sl.Images, registry.InstalledImage{Name: names[i], Digest: img.Digest, Tag: si.Tag})
	}
	done()
	// Everything is in place: verify once more as the initrd will.
	topts.Images = st
	if _, err := trust.Verify(signed, topts); err != nil {
		return nil, fmt.Errorf("%w: %w (the slots are unchanged)", ErrRefused, err)
	}
	if err := os.MkdirAll(filepath.Join(root, "system", "manifests"), 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteIn(filepath.Join(root, "tmp"), filepath.Join(root, sl.Signed), signed, 0o644); err != nil {
		return nil, fmt.Errorf("write the signed manifest: %w", err)
	}
	if opts.UKI != nil {
		// Before the commit point: a file and a boot entry nothing
		// references yet (collected by the next staging if this one dies).
		if state.Slots[state.Default].UKI == nil {
			if state.Slots[state.Default].UKI, err = fw.installed(); err != nil {
				return nil, err
			}
		}
		if sl.UKI, err = fw.install(opts.UKI, fmt.Sprintf("vessel version %d", sl.Version)); err != nil {
			return nil, err
		}
	} else {
		sl.UKI = state.Slots[state.Default].UKI
	}
	res.UKI = sl.UKI
	if res.Slot, err = state.Stage(sl, accepted, now()); err != nil {
		return nil, err
	}
	// Every image of the slot that stays must keep a tag (a record made
	// from an older current.json may not list them), or gc would take it.
	if err := ensureTagged(st, state.Slots[Other(res.Slot)]); err != nil {
		return nil, err
	}
	pause(FaultBeforeCommit)
	if err := Write(root, state); err != nil { // the commit point
		return nil, err
	}
	pause(FaultAfterCommit)
	res.TriesLeft = state.Trial.TriesLeft
	if fw != nil {
		if err := fw.armTrial(state); err != nil {
			return res, fmt.Errorf("staged in slot %s, but %w: the next boot records the trial as failed; stage again", res.Slot, err)
		}
		if u := state.TrialUKI(); u != nil {
			res.BootNext = u.Entry
		}
		if res.RemovedUKIs, err = fw.collectUKIs(state); err != nil {
			return res, fmt.Errorf("staged in slot %s, but removing unreferenced UKIs from the ESP failed: %w", res.Slot, err)
		}
	}
	if res.Untagged, res.GC, err = collect(st, state); err != nil {
		return res, fmt.Errorf("staged in slot %s, but collecting unreferenced images failed: %w", res.Slot, err)
	}
	return res, nil
}

// collect untags what no slot references and runs the store's gc.
func collect(st *store.Store, s *State) ([]string, *store.GCResult, error) {
	untagged, err := untagUnreferenced(st, s)
	if err != nil {
		return untagged, nil, err
	}
	if len(untagged) == 0 {
		return nil, nil, nil
	}
	g, err := st.GC()
	if err != nil {
		return untagged, nil, err
	}
	return untagged, &g, nil
}

// Accepted is the highest version accepted for product (0 if none).
func Accepted(v *trust.Versions, product string) (int64, error) {
	r, ok, err := v.Get(product)
	if err != nil {
		return 0, fmt.Errorf("read the anti-rollback record: %w", err)
	}
	if !ok {
		return 0, nil
	}
	return r.Version, nil
}

// present reports whether the store has the image manifest (its blobs are
// then checked by image.Verify).
func present(st *store.Store, d digest.Digest) bool {
	_, err := st.Resolve(d.String())
	return err == nil && st.HasBlob(d)
}

// imageSize is the image's size: manifest, config and layers.
func imageSize(st *store.Store, d digest.Digest) (int64, error) {
	desc, err := st.Resolve(d.String())
	if err != nil {
		return 0, err
	}
	m, err := st.Manifest(d)
	if err != nil {
		return 0, fmt.Errorf("image %s: %w", d, err)
	}
	n := desc.Size + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}

func (s *State) clone() *State {
	c := *s
	c.Slots = map[string]*Slot{}
	for k, v := range s.Slots {
		c.Slots[k] = v
	}
	if s.Trial != nil {
		t := *s.Trial
		c.Trial = &t
	}
	return &c
}

// StageFromRegistry fetches the signed system manifest ref names (with
// its attached signatures), takes the first signature that verifies with
// opts.Trust, and stages it with the images fetched from the same
// repository by digest (Stage).
func StageFromRegistry(ctx context.Context, st *store.Store, c *registry.Client, ref registry.Reference, opts StageOptions) (*Staged, error) {
	f, err := c.FetchSigned(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	var errs []error
	var signed []byte
	for _, s := range f.Signed {
		if _, err := trust.Verify(s, opts.Trust); err != nil {
			errs = append(errs, err)
			continue
		}
		signed = s
		break
	}
	if signed == nil {
		errs = append(errs, f.SignatureErrors...)
		if len(errs) == 0 {
			errs = append(errs, fmt.Errorf("the manifest %s has no signature attached", f.Artifact.Digest))
		}
		return nil, fmt.Errorf("%w: %s: %w: %w (the slots are unchanged)", ErrRefused, ref, registry.ErrNoValidSignature, errors.Join(errs...))
	}
	opts.Client = c
	opts.From = func(d digest.Digest) registry.Endpoint { return registry.Registry(ref.WithDigest(d)) }
	if opts.Source == "" {
		opts.Source = f.Ref.String()
	}
	return Stage(ctx, st, signed, opts)
}

// ensureTagged tags every image of the slot's signed manifest that is in
// the store as system/NAME:vVERSION, and fills in the slot's image list
// when it is empty.
func ensureTagged(st *store.Store, sl *Slot) error {
	if sl == nil {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(st.Root(), sl.Signed))
	if err != nil {
		return fmt.Errorf("slot version %d: %w", sl.Version, err)
	}
	sg, err := trust.ParseSigned(b)
	if err != nil {
		return fmt.Errorf("slot version %d: %w", sl.Version, err)
	}
	m, err := manifest.Parse(sg.Payload)
	if err != nil {
		return fmt.Errorf("slot version %d: %w", sl.Version, err)
	}
	names := []string{}
	if m.Hostfs != nil {
		names = append(names, "hostfs")
	}
	for _, s := range m.Services {
		names = append(names, s.Name)
	}
	var imgs []registry.InstalledImage
	for i, img := range m.Images() {
		tag := fmt.Sprintf("system/%s:v%d", strings.ToLower(names[i]), m.Version)
		imgs = append(imgs, registry.InstalledImage{Name: names[i], Digest: img.Digest, Tag: tag})
		if d, err := st.Resolve(tag); err == nil && d.Digest == img.Digest {
			continue
		}
		desc, err := st.Resolve(img.Digest.String())
		if err != nil {
			continue // not in the store: nothing to keep
		}
		if err := st.Tag(tag, desc); err != nil {
			return fmt.Errorf("tag image %s of slot version %d: %w", names[i], sl.Version, err)
		}
	}
	if len(sl.Images) == 0 {
		sl.Images = imgs
	}
	return nil
}
