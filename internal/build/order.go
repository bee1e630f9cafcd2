package build

import (
	"fmt"

	"github.com/vesselos/vessel/internal/recipe"
)

// Planned is one image in the order Build would build it (stacker's
// --order-only).
type Planned struct {
	Step  int    `json:"step"` // 1-based, across every file
	Image string `json:"image"`
	// File is the prerequisite recipe that defines the image; "" for the
	// images of the recipe itself.
	File      string   `json:"file,omitempty"`
	BuildOnly bool     `json:"buildOnly,omitempty"`
	Needs     []string `json:"needs,omitempty"`
}

// Order lists the images Build(f, Options{Only: only}) would build, in
// that order, without touching a store: prerequisite files first, whole,
// then f's images (all, or only and what they need).
func Order(f *recipe.File, only []string) ([]Planned, error) {
	var out []Planned
	for _, file := range f.BuildOrder() {
		if len(file.PrerequisiteFiles) != len(file.Prerequisites) {
			return nil, fmt.Errorf("%s lists prerequisites (%s) that were not read: parse it with recipe.LoadFile", file.Path, file.Prerequisites[0])
		}
		var o []string
		if file == f {
			o = only
		}
		plan, err := file.Plan(o...)
		if err != nil {
			return nil, err
		}
		name := ""
		if file != f {
			name = file.Path
		}
		for _, st := range plan.Steps {
			out = append(out, Planned{Step: len(out) + 1, Image: st.Image.Name, File: name, BuildOnly: !st.Tag, Needs: st.Needs})
		}
	}
	return out, nil
}
