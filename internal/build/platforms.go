package build

import (
	"context"
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/recipe"
)

// Index is one multi-platform image of BuildPlatforms: an OCI image index
// with one entry per platform, tagged as Ref.
type Index struct {
	Name       string             `json:"name"`
	Ref        string             `json:"ref"`
	Descriptor ocispec.Descriptor `json:"descriptor"`
	Platforms  []string           `json:"platforms"`
}

// BuildPlatforms builds the recipe once per architecture in arches (load
// reads the recipe with that architecture as the default of images without
// arch:) and tags each image as an OCI image index with one entry per
// platform, entries in the order of arches. An image whose builds are the
// same manifest for every architecture (it sets arch: itself) is tagged as
// that manifest. Nothing is tagged unless every architecture built.
// Layers and images are cached per platform, so a second architecture
// reuses nothing of the first and a rebuild of both is cached.
func BuildPlatforms(ctx context.Context, arches []string, load func(arch string) (*recipe.File, error), opt Options) (*Result, error) {
	if len(arches) == 0 {
		return nil, errors.New("build: no architecture")
	}
	if opt.Store == nil {
		return nil, errors.New("build: no store")
	}
	done, err := opt.Store.Writer() // keeps gc away from the untagged builds
	if err != nil {
		return nil, err
	}
	defer done()
	res := &Result{}
	byRef := map[string][]Built{}
	var order []string
	for _, a := range arches {
		f, err := load(a)
		if err != nil {
			return nil, err
		}
		r, err := build(ctx, f, opt, false)
		if err != nil {
			return nil, fmt.Errorf("build for %s: %w", a, err)
		}
		for _, im := range r.Images {
			if im.Ref == "" {
				continue
			}
			if _, ok := byRef[im.Ref]; !ok {
				order = append(order, im.Ref)
			}
			byRef[im.Ref] = append(byRef[im.Ref], im)
		}
		res.Images = append(res.Images, r.Images...)
	}
	for _, ref := range order {
		ims := byRef[ref]
		idx, err := writeIndex(opt, ims)
		if err != nil {
			return nil, fmt.Errorf("index for %s: %w", ref, err)
		}
		idx.Name, idx.Ref = ims[0].Name, ref
		if err := opt.Store.Tag(ref, idx.Descriptor); err != nil {
			return nil, fmt.Errorf("tag %s: %w", ref, err)
		}
		if opt.Progress != nil {
			opt.Progress(Event{Image: idx.Name, Status: StatusTagged, Digest: idx.Descriptor.Digest, Message: ref})
		}
		res.Indexes = append(res.Indexes, *idx)
	}
	return res, nil
}

// writeIndex stores the image index over ims (one per platform), or
// returns the one manifest when every build gave the same.
func writeIndex(opt Options, ims []Built) (*Index, error) {
	same := true
	for _, im := range ims[1:] {
		same = same && im.Descriptor.Digest == ims[0].Descriptor.Digest
	}
	if same {
		return &Index{Descriptor: ims[0].Descriptor, Platforms: []string{ims[0].Platform}}, nil
	}
	out := &Index{}
	var ms []ocispec.Descriptor
	for _, im := range ims {
		ms = append(ms, im.Descriptor)
		out.Platforms = append(out.Platforms, im.Platform)
	}
	d, err := image.WriteIndex(opt.Store, ms)
	if err != nil {
		return nil, err
	}
	out.Descriptor = d
	return out, nil
}
