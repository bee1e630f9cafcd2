package recipe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vesselos/vessel/internal/bounded"
)

// LoadFile reads the recipe at path together with its prerequisites:
// stacker's top-level `config: {prerequisites: [FILE, ...]}`, each FILE
// relative to the directory of the recipe that lists it. Every
// prerequisite is read recursively (its own prerequisites first) and once,
// however many files list it, with the same opts.Substitutions and
// opts.Arch; opts.Dir applies to the file at path only, opts.External is
// ignored (each file's External is what its prerequisites define).
//
// The returned File has PrerequisiteFiles set all the way down;
// File.BuildOrder lists the files to build. Besides the errors of Parse:
//   - a prerequisite that cannot be read is an *Error (ErrPrerequisite) at
//     the line that lists it;
//   - files that list each other in a cycle are an *Error (ErrCycle) that
//     names the cycle of files;
//   - an image name defined in two files of the build is an *Error
//     (ErrDuplicate): each name is tagged once;
//   - a `built` base or stacker:// source must be an image of the file
//     itself or of one of its prerequisites (recursively); otherwise the
//     error (ErrMissingBase) names the files searched.
func LoadFile(path string, opts Options) (*File, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("read recipe: %w", err)
	}
	l := &loader{opts: opts, files: map[string]*File{}, display: map[string]string{abs: path}}
	b, err := readRecipe(path)
	if err != nil {
		return nil, err
	}
	return l.load(abs, path, b, opts.Dir)
}

type loader struct {
	// set: loading a set of files (LoadFiles): references to images of
	// other files are checked once the whole set is read.
	set     bool
	opts    Options
	files   map[string]*File  // absolute path -> loaded completely
	stack   []string          // absolute paths being loaded, outermost first
	display map[string]string // absolute path -> the name errors use
}

func readRecipe(path string) ([]byte, error) {
	b, err := bounded.ReadFile(path, MaxSize)
	if errors.Is(err, bounded.ErrTooLarge) {
		return nil, &Error{File: path, Kind: ErrSyntax, Msg: fmt.Sprintf("larger than %d bytes", MaxSize)}
	}
	if err != nil {
		return nil, fmt.Errorf("read recipe: %w", err)
	}
	return b, nil
}

// name is how errors show the file at abs: relative to the working
// directory when it is below it, absolute otherwise.
func (l *loader) name(abs string) string {
	if n, ok := l.display[abs]; ok {
		return n
	}
	n := abs
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, abs); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			n = rel
		}
	}
	l.display[abs] = n
	return n
}

func (l *loader) load(abs, name string, b []byte, dir string) (*File, error) {
	mode := deferWithPrereqs
	if l.set {
		mode = deferAlways
	}
	f, err := parseRecipe(name, b, Options{Substitutions: l.opts.Substitutions, Dir: dir, Arch: l.opts.Arch}, mode)
	if err != nil {
		return nil, err
	}
	l.stack = append(l.stack, abs)
	for i, pre := range f.Prerequisites {
		line := f.prereqLines[i]
		fail := func(kind error, cause error, format string, args ...any) error {
			return &Error{File: f.Path, Line: line, Key: "config.prerequisites", Kind: kind, Msg: fmt.Sprintf(format, args...), Err: cause}
		}
		for j, s := range l.stack {
			if s == pre {
				var cyc []string
				for _, c := range l.stack[j:] {
					cyc = append(cyc, l.name(c))
				}
				cyc = append(cyc, l.name(pre))
				return nil, fail(ErrCycle, nil, "recipe files list each other as prerequisites in a cycle: %s", strings.Join(cyc, " -> "))
			}
		}
		if done := l.files[pre]; done != nil {
			f.PrerequisiteFiles = append(f.PrerequisiteFiles, done)
			continue
		}
		pb, err := readRecipe(pre)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				err = os.ErrNotExist // the path is in the message already
			}
			return nil, fail(ErrPrerequisite, err, "prerequisite %s", l.name(pre))
		}
		pf, err := l.load(pre, l.name(pre), pb, "")
		if err != nil {
			return nil, err
		}
		f.PrerequisiteFiles = append(f.PrerequisiteFiles, pf)
	}
	l.stack = l.stack[:len(l.stack)-1]

	// What the prerequisites define, and no name twice in one build.
	external := map[string]string{}
	byName := map[string]*Image{}
	order := f.BuildOrder()
	for _, pf := range order {
		for _, img := range pf.Images {
			if prev := byName[img.Name]; prev != nil {
				return nil, &Error{File: pf.Path, Line: img.Line, Image: img.Name, Kind: ErrDuplicate,
					Msg: fmt.Sprintf("also defined in %s:%d; the images of a build and its prerequisites need distinct names (each is tagged NAME:latest)", prev.file, prev.Line)}
			}
			byName[img.Name] = img
			if pf != f {
				external[img.Name] = pf.Path
			}
		}
	}
	if l.set {
		l.files[abs] = f
		return f, nil
	}
	if errs := unknownRefs(f, external); len(errs) > 0 {
		p := &parser{errs: errs}
		return nil, p.result()
	}
	l.files[abs] = f
	return f, nil
}
