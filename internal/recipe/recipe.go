// Package recipe reads vessel.yaml build recipes (the stacker.yaml format
// that project-stacker users already write) and turns them into data the
// build executor acts on. It runs no container and touches no store:
//
//   - Parse / ParseFile: YAML -> *File, with every error naming the file, the
//     line, the image and the key ("vessel.yaml:12: image "app": unknown key
//     "rnu""). ${{VAR}} and ${{VAR:default}} are substituted first, as stacker
//     does.
//   - LoadFile: a recipe with the files its `config: prerequisites:` lists,
//     recursively, each once; File.BuildOrder lists them for the executor.
//   - File.Plan: the images to build, dependencies first, in file order among
//     independent images, optionally narrowed to --only NAME and what it needs.
//   - Key: the two cache keys of an image (the layer key decides whether `run`
//     must execute again, the config key decides whether the image config and
//     manifest must be written again).
//   - Cache: the persistent key -> descriptor index in <store root>/build-cache.json.
//   - Stage: the host directory tree a build container sees at /stacker
//     (imports at /stacker/imports, also reachable as /vessel/imports) plus the
//     files that imports with `dest:` add to the image itself.
//   - Image.Script, Image.RunEnv, Image.ApplyConfig: what the container runs,
//     with which environment, and the image config that results.
//
// The executor (internal/build) resolves base images, mounts them verified,
// runs the script through internal/runtime and writes layers through
// internal/layer and internal/store; look there for anything that happens on
// disk besides staging imports and the cache index.
package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/vesselos/vessel/internal/reference"
)

// File is a parsed recipe: every image it defines, in file order.
type File struct {
	// Path is the recipe's file name as given to Parse.
	Path string
	// Text is the recipe as written, before substitution (Section gives
	// an image's part of it, which the stacker_yaml annotation carries:
	// --substitute values, which may be secrets, never reach an image
	// through it).
	Text string
	// Dir is the directory that relative paths (imports, tar and oci
	// bases, prerequisites) were resolved against.
	Dir string
	// Images in the order the file defines them.
	Images []*Image
	// Prerequisites are other recipe files (absolute paths) from stacker's
	// top-level `config: {prerequisites: [...]}` that must be built first.
	Prerequisites []string
	// PrerequisiteFiles are those files, parsed, in the same order: set by
	// LoadFile (Parse and ParseFile leave it empty). A file listed by
	// several files of one build is one *File, shared.
	PrerequisiteFiles []*File
	// Warnings are problems that do not stop the build (an unknown key
	// in an import, which stacker ignores), each naming its line.
	Warnings []*Error
	// prereqLines are the lines where Prerequisites were written.
	prereqLines []int
}

// BuildOrder lists the files one build of f builds, in order: every file
// after its own prerequisites, each once, f last. It follows
// PrerequisiteFiles, so it is just [f] for a file not read by LoadFile.
func (f *File) BuildOrder() []*File {
	var out []*File
	seen := map[*File]bool{}
	var visit func(*File)
	visit = func(x *File) {
		if seen[x] {
			return
		}
		seen[x] = true
		for _, p := range x.PrerequisiteFiles {
			visit(p)
		}
		out = append(out, x)
	}
	visit(f)
	return out
}

// Section is the text of img's definition as written in f (before
// substitution): from its name's line to the last non-blank line before
// the next top-level key. It is what the stacker_yaml annotation carries,
// so that editing one image changes only that image's manifest.
func (f *File) Section(img *Image) string {
	lines := strings.SplitAfter(f.Text, "\n")
	start := img.Line - 1
	if start < 0 || start >= len(lines) {
		return ""
	}
	end := len(lines)
	for j := start + 1; j < len(lines); j++ {
		l := lines[j]
		if l != "" && l[0] != ' ' && l[0] != '\t' && l[0] != '#' && l[0] != '\n' && l[0] != '\r' && l[0] != '-' {
			end = j
			break
		}
	}
	for end > start+1 && strings.TrimSpace(lines[end-1]) == "" {
		end--
	}
	return strings.Join(lines[start:end], "")
}

// Image returns the image called name, or nil.
func (f *File) Image(name string) *Image {
	for _, img := range f.Images {
		if img.Name == name {
			return img
		}
	}
	return nil
}

// FromType is the kind of base an image starts from.
type FromType string

// The base types stacker defines.
const (
	Scratch FromType = "scratch" // an empty root
	Tar     FromType = "tar"     // a rootfs tarball: URL is a local path
	OCI     FromType = "oci"     // an OCI layout: URL is DIR:TAG, DIR ends at the first colon
	Docker  FromType = "docker"  // a registry: URL is docker://HOST/REPO[:TAG|@DIGEST]
	Built   FromType = "built"   // an image of this file or of a prerequisite: Tag is its name
)

// From is an image's `from:` section.
type From struct {
	Type FromType
	// URL as written for docker; made absolute for tar and oci (an oci URL
	// keeps its :TAG suffix).
	URL string
	// Tag names the base image for built.
	Tag string
	// FromImage and ImagePath are set for a tar base whose url is
	// stacker://IMAGE/PATH: a tarball inside an image built earlier (of
	// this file or of a prerequisite), typically a build_only one.
	FromImage, ImagePath string
	// Hash is the expected sha256 (lower-case hex) of a tar base's
	// tarball (local, http(s) or stacker://), or "": a tarball with
	// another sha256 is refused (*HashMismatchError).
	Hash string
	// Insecure allows plain http to a docker registry.
	Insecure bool
	Line     int
}

// Layout splits an oci base's URL into the layout directory and the tag
// (the directory ends at the first colon; see package reference).
func (f From) Layout() (dir, tag string) {
	r, err := reference.ParseLayout(f.URL)
	if err != nil {
		return f.URL, ""
	}
	return r.Dir, r.Tag
}

// Import is one entry of `imports:` (or stacker's legacy `import:`).
//
// Placement follows stacker: without Dest the source is copied to
// /stacker/imports/<base name of Path> (a directory Path ending in "/" has its
// contents copied into /stacker/imports itself) and only the build sees it.
// With Dest the source becomes part of the image: a Dest ending in "/" is a
// directory the source is copied into, any other Dest is the source's new
// name; a directory Path ending in "/" has its contents copied into Dest.
type Import struct {
	// Path as written (after substitution).
	Path string
	// Source is where the content comes from: an absolute host path for
	// local imports (keeping a trailing "/"), the URL otherwise.
	Source string
	// FromImage and ImagePath are set for stacker://IMAGE/PATH imports,
	// which copy PATH out of an image built earlier from this file or
	// from one of its prerequisites.
	FromImage, ImagePath string
	// Dest is the absolute path in the image, or "".
	Dest string
	// Mode, when set, replaces the permission bits of every imported
	// regular file.
	Mode *fs.FileMode
	// UID and GID, when set, own every imported file in the container.
	UID, GID *int
	// Hash is the expected sha256 (lower-case hex) of a file import, or "".
	Hash string
	Line int
}

// HostBind is one entry of stacker's `binds:`: a host path bind-mounted
// read-write into the build container, never part of the image.
type HostBind struct {
	// Source is the absolute host path (relative ones are resolved
	// against the recipe's directory).
	Source string
	// Dest is the absolute path in the build container (default: Source).
	Dest string
	Line int
}

// Remote reports whether the import names an http(s) URL.
func (i Import) Remote() bool { return isHTTP(i.Source) }

// Image is one image definition.
type Image struct {
	Name string
	Line int
	From From
	// Imports, in file order. LegacyImport records that they were written
	// as `import:` (stacker then also offers them directly under /stacker).
	Imports      []Import
	LegacyImport bool
	// Binds are host paths mounted into the build container (stacker's
	// binds:). overlay_dirs are read as imports with dest: (their
	// contents land in the image).
	Binds []HostBind
	// Run holds the script lines; a single string is one element.
	Run []string
	// GenerateLabels is stacker's generate_labels script (see
	// LabelsScript), nil when not written.
	GenerateLabels []string
	// Environment goes into the image config and into the build
	// environment; BuildEnv only into the build environment.
	Environment map[string]string
	BuildEnv    map[string]string
	Labels      map[string]string
	Annotations map[string]string
	// Entrypoint, Cmd and FullCommand are nil when not written; a string
	// is split like a shell would.
	Entrypoint  []string
	Cmd         []string
	FullCommand []string
	WorkingDir  string
	Volumes     []string
	RuntimeUser string
	BuildOnly   bool
	// OS and Arch of the image; Arch defaults to the building machine's
	// (as in stacker), OS is always linux.
	OS, Arch string
	// ArchLine is the line of `arch:`, 0 when defaulted.
	ArchLine int
	// keyLines records where each key was written, for later errors.
	keyLines map[string]int
	file     string
}

// KeyLine is the line where key was written in this image, or the image's
// own line when it was not.
func (i *Image) KeyLine(key string) int {
	if l, ok := i.keyLines[key]; ok {
		return l
	}
	return i.Line
}

// Needs lists the images that must be built before this one: the built
// base first, then sources of stacker:// imports, without repeats. They are
// images of the same file or, in a file with prerequisites, of those.
func (i *Image) Needs() []string {
	var out []string
	seen := map[string]bool{}
	add := func(n string) {
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	if i.From.Type == Built {
		add(i.From.Tag)
	}
	add(i.From.FromImage)
	for _, imp := range i.Imports {
		add(imp.FromImage)
	}
	return out
}

// Errors of this package, for errors.Is. Every recipe error is an *Error
// that wraps one of them.
var (
	ErrSyntax      = errors.New("invalid recipe")
	ErrUnknownKey  = errors.New("unknown key")
	ErrUndefined   = errors.New("undefined substitution")
	ErrDuplicate   = errors.New("defined twice")
	ErrMissingBase = errors.New("unknown image")
	ErrCycle       = errors.New("dependency cycle")
	ErrImport      = errors.New("import failed")
	// ErrPrerequisite: a file listed in config.prerequisites cannot be read.
	ErrPrerequisite = errors.New("prerequisite failed")
)

// Error is a problem at a place in a recipe.
type Error struct {
	File  string
	Line  int    // 0 when the problem has no single line
	Image string // "" for problems outside an image
	Key   string // the key concerned, or ""
	Msg   string
	Kind  error // one of the Err* sentinels
	Err   error // an underlying cause, or nil
}

func (e *Error) Error() string {
	s := e.File
	if e.Line > 0 {
		s += fmt.Sprintf(":%d", e.Line)
	}
	s += ": "
	if e.Image != "" {
		s += fmt.Sprintf("image %q: ", e.Image)
	}
	if e.Key != "" {
		s += e.Key + ": "
	}
	s += e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the sentinel and the cause.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

// HashMismatchError is content whose sha256 is not the one a recipe's
// hash: pinned.
type HashMismatchError struct {
	Expected, Actual string // lower-case hex
}

func (e *HashMismatchError) Error() string {
	return fmt.Sprintf("sha256 mismatch: hash: expects %s, the content has %s", e.Expected, e.Actual)
}
