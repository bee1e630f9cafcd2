package recipe

import (
	"fmt"
	"strings"
)

// Plan is the build order of a recipe: each image after everything it
// needs, and otherwise in file order, so the same file always gives the
// same order.
type Plan struct {
	File  *File
	Steps []Step
}

// Step is one image to build.
type Step struct {
	Image *Image
	// Needs are the images of this plan that must be built first (the built
	// base, then the sources of stacker:// imports). Images of prerequisite
	// files are not listed: they are built before the plan starts.
	Needs []string
	// Tag reports whether the result is tagged in the store: false for
	// build_only images, which exist only for the images built from them.
	Tag bool
}

// Plan orders the images of f for building. With names (--only), the plan
// holds those images and what they need, and nothing else.
//
// What decides each step's cache keys is the Image itself (its base, script,
// build environment, imports and config fields) plus what the executor
// resolves: the base manifest digest, the layer type and SOURCE_DATE_EPOCH;
// see Key.
func (f *File) Plan(names ...string) (*Plan, error) {
	want := map[string]bool{}
	if len(names) == 0 {
		for _, img := range f.Images {
			want[img.Name] = true
		}
	}
	var add func(string)
	add = func(n string) {
		if want[n] {
			return
		}
		want[n] = true
		for _, d := range f.localNeeds(f.Image(n)) {
			add(d)
		}
	}
	for _, n := range names {
		if f.Image(n) == nil {
			return nil, fmt.Errorf("image %s: no such image in %s (images: %s)", n, f.Path, strings.Join(imageNames(f), ", "))
		}
		add(n)
	}
	done := map[string]bool{}
	p := &Plan{File: f}
	for len(p.Steps) < len(want) {
		progressed := false
		for _, img := range f.Images {
			if !want[img.Name] || done[img.Name] {
				continue
			}
			ready := true
			for _, d := range f.localNeeds(img) {
				if !done[d] {
					ready = false
					break
				}
			}
			if ready {
				done[img.Name] = true
				p.Steps = append(p.Steps, Step{Image: img, Needs: f.localNeeds(img), Tag: !img.BuildOnly})
				progressed = true
				break // restart from the top: file order among the ready ones
			}
		}
		if !progressed {
			if cyc := findCycle(f); cyc != nil {
				return nil, &Error{File: f.Path, Line: f.Image(cyc[0]).Line, Image: cyc[0], Kind: ErrCycle,
					Msg: "images depend on each other in a cycle: " + strings.Join(cyc, " -> ")}
			}
			return nil, fmt.Errorf("plan %s: no buildable image left", f.Path)
		}
	}
	return p, nil
}

// Names lists the images of the plan in build order.
func (p *Plan) Names() []string {
	out := make([]string, len(p.Steps))
	for i, s := range p.Steps {
		out[i] = s.Image.Name
	}
	return out
}
