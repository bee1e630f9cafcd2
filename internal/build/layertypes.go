package build

import (
	"context"
	"errors"
	"fmt"

	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/recipe"
)

// BuildLayerTypes builds f once per layer format, as stacker builds one
// image per --layer-type in one run. With one format it is Build with
// opt.Format set. With several, each build tags its images as stacker
// names them, NAME-TYPE:latest (app-squashfs, app-erofs), and every
// Built says its LayerType; NAME:latest is left alone. The builds run in
// the order given, each tagging as its files complete; a failure stops
// the run, keeping the tags of the types built before it. The types share
// one build cache, which keys layers by type, so a rebuild is cached for
// each.
func BuildLayerTypes(ctx context.Context, f *recipe.File, formats []layer.Format, opt Options) (*Result, error) {
	switch len(formats) {
	case 0:
		return Build(ctx, f, opt)
	case 1:
		opt.Format = formats[0]
		return Build(ctx, f, opt)
	}
	seen := map[layer.Type]bool{}
	for _, fm := range formats {
		if seen[fm.Type] {
			return nil, fmt.Errorf("build: layer type %s given twice", fm.Type)
		}
		seen[fm.Type] = true
	}
	if opt.NoCache {
		// Reset once, not between the types: the second type would
		// otherwise discard what the first one cached.
		if opt.Store == nil {
			return nil, errors.New("build: no store or mount manager")
		}
		if err := recipe.OpenCache(opt.Store.Root()).Reset(); err != nil {
			return nil, err
		}
		opt.NoCache = false
	}
	res := &Result{}
	for _, fm := range formats {
		o := opt
		o.Format = fm
		o.tagSuffix = "-" + string(fm.Type)
		r, err := Build(ctx, f, o)
		if err != nil {
			return nil, fmt.Errorf("layer type %s: %w", fm.Type, err)
		}
		for i := range r.Images {
			r.Images[i].LayerType = string(fm.Type)
		}
		res.Images = append(res.Images, r.Images...)
	}
	return res, nil
}
