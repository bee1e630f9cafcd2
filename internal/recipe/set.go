package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// DefaultFilePattern matches the recipe files FindFiles looks for:
// stacker.yaml (stacker's recursive-build default) and vessel.yaml.
const DefaultFilePattern = `(^|/)(stacker|vessel)\.yaml$`

// FindFiles lists the files under dir whose slash-separated path matches
// pattern (DefaultFilePattern if ""), sorted, as stacker's recursive-build
// finds stacker.yaml files. Hidden directories (.git, ...) are skipped and
// symbolic links are not followed. No match is an error naming dir.
func FindFiles(dir, pattern string) ([]string, error) {
	if pattern == "" {
		pattern = DefaultFilePattern
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("find recipes: pattern %q: %w", pattern, err)
	}
	var out []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() && re.MatchString(filepath.ToSlash(p)) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find recipes under %s: %w", dir, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("find recipes under %s: no file matches %s: %w", dir, pattern, os.ErrNotExist)
	}
	sort.Strings(out)
	return out, nil
}

// LoadFiles reads a set of recipe files, with their prerequisites, to be
// built in one run (stacker's recursive-build). Unlike one LoadFile, an
// image of one file of the set may be built on (or take stacker://
// sources from) an image of any other file of the set, prerequisite or
// not: that makes the other file a dependency. The result is a File with
// no images of its own whose PrerequisiteFiles are the set in dependency
// order (each file after its prerequisites and after the files that
// define its bases, otherwise in path order), so its BuildOrder builds
// every file once, bases first; Path and Dir are dir.
//
// Errors are those of LoadFile, with the whole set as the scope: an image
// name defined in two files (ErrDuplicate), a base no file of the set
// defines (ErrMissingBase), and files that depend on each other in a
// cycle (ErrCycle, naming the files).
func LoadFiles(dir string, paths []string, opts Options) (*File, error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("read recipes: %w", err)
	}
	l := &loader{set: true, opts: Options{Substitutions: opts.Substitutions, Arch: opts.Arch}, files: map[string]*File{}, display: map[string]string{}}
	var roots []*File
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("read recipe: %w", err)
		}
		if f := l.files[abs]; f != nil {
			roots = append(roots, f)
			continue
		}
		b, err := readRecipe(p)
		if err != nil {
			return nil, err
		}
		f, err := l.load(abs, l.name(abs), b, "")
		if err != nil {
			return nil, err
		}
		roots = append(roots, f)
	}
	// Every file of the set, prerequisites included, each once.
	var all []*File
	seen := map[*File]bool{}
	for _, r := range roots {
		for _, f := range r.BuildOrder() {
			if !seen[f] {
				seen[f] = true
				all = append(all, f)
			}
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Path < all[j].Path })
	defined := map[string]*File{}
	byName := map[string]*Image{}
	for _, f := range all {
		for _, img := range f.Images {
			if prev := byName[img.Name]; prev != nil {
				return nil, &Error{File: f.Path, Line: img.Line, Image: img.Name, Kind: ErrDuplicate,
					Msg: fmt.Sprintf("also defined in %s:%d; the images of one build need distinct names (each is tagged NAME:latest)", prev.file, prev.Line)}
			}
			byName[img.Name], defined[img.Name] = img, f
		}
	}
	var errs []error
	for _, f := range all {
		external := map[string]string{}
		for n, df := range defined {
			if df != f {
				external[n] = df.Path
			}
		}
		errs = append(errs, unknownRefs(f, external)...)
	}
	if len(errs) > 0 {
		return nil, (&parser{errs: errs}).result()
	}
	// Dependency order: prerequisites and the files of other-file bases.
	deps := func(f *File) []*File {
		out := append([]*File(nil), f.PrerequisiteFiles...)
		for _, img := range f.Images {
			for _, n := range img.Needs() {
				if df := defined[n]; df != nil && df != f {
					out = append(out, df)
				}
			}
		}
		return out
	}
	const (
		white = iota
		grey
		black
	)
	color := map[*File]int{}
	var order, stack []*File
	var visit func(*File) error
	visit = func(f *File) error {
		switch color[f] {
		case black:
			return nil
		case grey:
			var cyc []string
			for i := len(stack) - 1; i >= 0; i-- {
				cyc = append([]string{stack[i].Path}, cyc...)
				if stack[i] == f {
					break
				}
			}
			cyc = append(cyc, f.Path)
			return &Error{File: f.Path, Kind: ErrCycle, Msg: "recipe files depend on each other in a cycle (prerequisites or built bases): " + strings.Join(cyc, " -> ")}
		}
		color[f] = grey
		stack = append(stack, f)
		for _, d := range deps(f) {
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		color[f] = black
		order = append(order, f)
		return nil
	}
	for _, f := range all {
		if err := visit(f); err != nil {
			return nil, err
		}
	}
	top := &File{Path: dir, Dir: absDir}
	for _, f := range order {
		top.Prerequisites = append(top.Prerequisites, f.Path)
		top.PrerequisiteFiles = append(top.PrerequisiteFiles, f)
	}
	if len(order) == 0 {
		return nil, errors.New("read recipes: no recipe files")
	}
	return top, nil
}
