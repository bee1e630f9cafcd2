package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/vesselos/vessel/internal/lazyre"
	"github.com/vesselos/vessel/internal/reference"
)

// MaxSize bounds a recipe file.
const MaxSize = 4 << 20

// maxErrors is how many problems one Parse reports before it stops.
const maxErrors = 20

// Options change how a recipe is read.
type Options struct {
	// Substitutions are the --substitute KEY=VAL values.
	Substitutions map[string]string
	// Dir is what relative paths resolve against; default: the directory
	// of the recipe file.
	Dir string
	// Arch is the architecture of images that do not set `arch:`;
	// default: the building machine's (runtime.GOARCH), as in stacker.
	Arch string
	// External are images that other recipe files build before this one
	// (its prerequisites): image name -> the file that defines it. A
	// `built` base or a stacker:// import may name them. LoadFile sets it
	// for each file it reads from that file's prerequisites.
	External map[string]string
}

// ParseFile reads and parses the recipe at path, alone: see LoadFile for
// a recipe with prerequisites.
func ParseFile(path string, opts Options) (*File, error) {
	b, err := readRecipe(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b, opts)
}

// Parse parses the recipe text b; name is used in errors and, unless
// opts.Dir is set, to resolve relative paths. All problems found (up to 20)
// come back together, each an *Error.
//
// Parse reads one file: a `built` base or stacker:// source that is not an
// image of this file must be in opts.External. LoadFile reads a recipe
// together with its prerequisites.
func Parse(name string, b []byte, opts Options) (*File, error) {
	return parseRecipe(name, b, opts, deferNever)
}

// deferMode says when parseRecipe leaves references to images that are
// not in the file for its caller to check.
type deferMode int

const (
	deferNever       deferMode = iota // Parse: check against opts.External
	deferWithPrereqs                  // LoadFile: when the file has prerequisites
	deferAlways                       // LoadFiles: the whole set decides
)

// parseRecipe is Parse; references to images that are not in the file
// are left for the caller to check as mode says (LoadFile, once it has
// read the prerequisites; LoadFiles, once it has read the set).
func parseRecipe(name string, b []byte, opts Options, mode deferMode) (*File, error) {
	if len(b) > MaxSize {
		return nil, &Error{File: name, Kind: ErrSyntax, Msg: fmt.Sprintf("larger than %d bytes", MaxSize)}
	}
	text, lineOf, err := substitute(name, string(b), opts.Substitutions)
	if err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		dir = filepath.Dir(name)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	arch := opts.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	p := &parser{file: name, dir: dir, lineOf: lineOf, budget: 100000, arch: arch}
	f := &File{Path: name, Dir: dir, Text: string(b)}

	var doc yaml.Node
	dec := yaml.NewDecoder(strings.NewReader(text))
	if err := dec.Decode(&doc); err != nil {
		if err.Error() == "EOF" {
			return nil, &Error{File: name, Kind: ErrSyntax, Msg: "no images defined"}
		}
		e := &Error{File: name, Kind: ErrSyntax, Msg: "not valid YAML", Err: p.fixYAMLError(err)}
		if m := yamlLine.FindStringSubmatch(e.Err.Error()); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
		}
		return nil, e
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: name, Line: p.line(&extra), Kind: ErrSyntax, Msg: "more than one YAML document"}
	}
	root := p.deref(&doc)
	if root != nil && root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = p.deref(root.Content[0])
	}
	if root == nil || (root.Kind == yaml.ScalarNode && root.Tag == "!!null") {
		return nil, &Error{File: name, Kind: ErrSyntax, Msg: "no images defined"}
	}
	pairs, ok := p.mapping(root, "", "the recipe", true)
	if !ok {
		return nil, p.result()
	}
	seen := map[string]int{}
	for _, kv := range pairs {
		key := kv.k.Value
		if key == "config" {
			p.config(f, kv.v)
			continue
		}
		if l, dup := seen[key]; dup {
			p.fail(kv.k, "", "", ErrDuplicate, "image %q defined twice (lines %d and %d)", key, l, p.line(kv.k))
			continue
		}
		seen[key] = p.line(kv.k)
		if img := p.image(kv.k, kv.v); img != nil {
			f.Images = append(f.Images, img)
		}
		if len(p.errs) >= maxErrors {
			break
		}
	}
	if len(p.errs) == 0 && len(f.Images) == 0 {
		p.fail(root, "", "", ErrSyntax, "no images defined")
	}
	if len(p.errs) == 0 {
		p.validate(f, opts.External, mode == deferAlways || mode == deferWithPrereqs && len(f.Prerequisites) > 0)
	}
	if err := p.result(); err != nil {
		return nil, err
	}
	f.Warnings = p.warnings
	return f, nil
}

type parser struct {
	warnings []*Error
	file     string
	dir      string
	arch     string
	lineOf   []int
	errs     []error
	budget   int
}

type pair struct{ k, v *yaml.Node }

func (p *parser) result() error {
	switch len(p.errs) {
	case 0:
		return nil
	case 1:
		return p.errs[0]
	}
	return errors.Join(p.errs...)
}

// line maps a node's line in the substituted text to the line the user wrote.
func (p *parser) line(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	return p.mapLine(n.Line)
}

func (p *parser) mapLine(l int) int {
	if l > 0 && l < len(p.lineOf) {
		return p.lineOf[l]
	}
	return l
}

var yamlLine = lazyre.New(`line (\d+)`)

// fixYAMLError rewrites "line N" in a YAML syntax error to the original line.
func (p *parser) fixYAMLError(err error) error {
	s := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(m[5:])
		return fmt.Sprintf("line %d", p.mapLine(n))
	})
	return errors.New(strings.TrimPrefix(s, "yaml: "))
}

func (p *parser) fail(n *yaml.Node, image, key string, kind error, format string, args ...any) {
	if len(p.errs) >= maxErrors {
		return
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: p.line(n), Image: image, Key: key, Kind: kind, Msg: fmt.Sprintf(format, args...)})
}

// warn records a problem that does not stop the build (File.Warnings).
func (p *parser) warn(n *yaml.Node, image, key string, format string, args ...any) {
	p.warnings = append(p.warnings, &Error{File: p.file, Line: p.line(n), Image: image, Key: key, Kind: ErrUnknownKey, Msg: fmt.Sprintf(format, args...)})
}

// deref follows aliases, charging the alias budget so that a recipe built
// to expand exponentially ("billion laughs") fails instead of hanging.
func (p *parser) deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 100 {
			return nil
		}
		n = n.Alias
	}
	p.budget--
	return n
}

func kindName(n *yaml.Node) string {
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "an empty value"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported YAML node"
}

// mapping returns the key/value pairs of a mapping node, with YAML merge
// keys (<<: *anchor) expanded: explicit keys win over merged ones. Keys must
// be scalars; a key written twice is an error (unless dupOK, where the
// caller reports duplicates itself).
func (p *parser) mapping(n *yaml.Node, image, what string, dupOK bool) ([]pair, bool) {
	n = p.deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		p.fail(n, image, "", ErrSyntax, "%s must be a mapping, got %s", what, kindName(n))
		return nil, false
	}
	var out, merged []pair
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if p.budget < 0 {
			p.fail(n, image, "", ErrSyntax, "too many alias expansions")
			return nil, false
		}
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.fail(k, image, "", ErrSyntax, "a key in %s must be a string, got %s", what, kindName(k))
			return nil, false
		}
		if k.Tag == "!!merge" {
			srcs := []*yaml.Node{p.deref(v)}
			if srcs[0] != nil && srcs[0].Kind == yaml.SequenceNode {
				srcs = srcs[0].Content
			}
			for _, s := range srcs {
				m, ok := p.mapping(s, image, "a merged value (<<)", false)
				if !ok {
					return nil, false
				}
				merged = append(merged, m...)
			}
			continue
		}
		if l, dup := seen[k.Value]; dup && !dupOK {
			p.fail(k, image, k.Value, ErrDuplicate, "written twice in %s (lines %d and %d)", what, l, p.line(k))
			return nil, false
		}
		seen[k.Value] = p.line(k)
		out = append(out, pair{k, v})
	}
	for _, kv := range merged {
		if _, ok := seen[kv.k.Value]; !ok {
			seen[kv.k.Value] = p.line(kv.k)
			out = append(out, kv)
		}
	}
	return out, true
}

// str reads a scalar as a string; an empty value is "".
func (p *parser) str(n *yaml.Node, image, key string) (string, bool) {
	n = p.deref(n)
	if n == nil || n.Kind != yaml.ScalarNode {
		p.fail(n, image, key, ErrSyntax, "expected a string, got %s", kindName(n))
		return "", false
	}
	if n.Tag == "!!null" {
		return "", true
	}
	return n.Value, true
}

// strs reads a list of scalars; a single scalar is a list of one.
func (p *parser) strs(n *yaml.Node, image, key string) ([]string, bool) {
	n = p.deref(n)
	if n != nil && n.Kind == yaml.ScalarNode {
		if n.Tag == "!!null" {
			return []string{}, true
		}
		return []string{n.Value}, true
	}
	if n == nil || n.Kind != yaml.SequenceNode {
		p.fail(n, image, key, ErrSyntax, "expected a string or a list of strings, got %s", kindName(n))
		return nil, false
	}
	out := make([]string, 0, len(n.Content))
	for _, e := range n.Content {
		s, ok := p.str(e, image, key)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// command reads entrypoint/cmd/full_command: a list, or a string split the
// way a shell splits words.
func (p *parser) command(n *yaml.Node, image, key string) ([]string, bool) {
	d := p.deref(n)
	if d != nil && d.Kind == yaml.ScalarNode && d.Tag != "!!null" {
		words, err := splitWords(d.Value)
		if err != nil {
			p.fail(d, image, key, ErrSyntax, "%v", err)
			return nil, false
		}
		if words == nil {
			words = []string{}
		}
		return words, true
	}
	return p.strs(n, image, key)
}

func (p *parser) strMap(n *yaml.Node, image, key string) (map[string]string, bool) {
	pairs, ok := p.mapping(n, image, key, false)
	if !ok {
		return nil, false
	}
	m := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		v, ok := p.str(kv.v, image, key+"."+kv.k.Value)
		if !ok {
			return nil, false
		}
		m[kv.k.Value] = v
	}
	return m, true
}

func (p *parser) boolean(n *yaml.Node, image, key string) (bool, bool) {
	n = p.deref(n)
	if n != nil && n.Kind == yaml.ScalarNode {
		switch strings.ToLower(n.Value) {
		case "true", "yes", "on":
			return true, true
		case "false", "no", "off", "":
			return false, true
		}
	}
	p.fail(n, image, key, ErrSyntax, "expected true or false, got %s", kindName(n))
	return false, false
}

// imageKeys are the keys an image definition may have.
var imageKeys = []string{
	"from", "imports", "import", "run", "environment", "build_env", "labels", "annotations",
	"entrypoint", "cmd", "full_command", "working_dir", "volumes", "runtime_user",
	"build_only", "arch", "os", "binds", "overlay_dirs", "generate_labels",
}

// stackerOnly are stacker keys that vessel does not implement.
var stackerOnly = map[string]string{
	"build_env_passthrough": "the host environment does not leak into builds; use build_env",
	"apply":                 "",
	"bom":                   "",
	"was_legacy_import":     "",
}

func (p *parser) image(kn, vn *yaml.Node) *Image {
	name := kn.Value
	if !imageName.MatchString(name) {
		p.fail(kn, "", "", ErrSyntax, "bad image name %q: use letters, digits, '.', '_', '-' and '/', starting with a letter or digit", name)
		return nil
	}
	pairs, ok := p.mapping(vn, name, fmt.Sprintf("image %q", name), false)
	if !ok {
		return nil
	}
	img := &Image{Name: name, Line: p.line(kn), OS: "linux", Arch: p.arch, keyLines: map[string]int{}, file: p.file}
	nerr := len(p.errs)
	var sawImport, sawImports bool
	for _, kv := range pairs {
		key, v := kv.k.Value, kv.v
		img.keyLines[key] = p.line(kv.k)
		switch key {
		case "from":
			img.From = p.from(name, v)
		case "imports", "import":
			if key == "import" {
				sawImport, img.LegacyImport = true, true
			} else {
				sawImports = true
			}
			if sawImport && sawImports {
				p.fail(kv.k, name, key, ErrSyntax, "write either import: (stacker's legacy form) or imports:, not both")
				continue
			}
			img.Imports = append(img.Imports, p.imports(name, key, v)...)
		case "binds":
			img.Binds = append(img.Binds, p.binds(name, v)...)
		case "overlay_dirs":
			img.Imports = append(img.Imports, p.overlayDirs(name, v)...)
		case "run":
			img.Run, _ = p.strs(v, name, key)
		case "generate_labels":
			img.GenerateLabels, _ = p.strs(v, name, key)
		case "environment":
			img.Environment, _ = p.strMap(v, name, key)
		case "build_env":
			img.BuildEnv, _ = p.strMap(v, name, key)
		case "labels":
			img.Labels, _ = p.strMap(v, name, key)
		case "annotations":
			img.Annotations, _ = p.strMap(v, name, key)
		case "entrypoint":
			img.Entrypoint, _ = p.command(v, name, key)
		case "cmd":
			img.Cmd, _ = p.command(v, name, key)
		case "full_command":
			img.FullCommand, _ = p.command(v, name, key)
		case "working_dir":
			img.WorkingDir, _ = p.str(v, name, key)
		case "volumes":
			img.Volumes, _ = p.strs(v, name, key)
		case "runtime_user":
			img.RuntimeUser, _ = p.str(v, name, key)
		case "build_only":
			img.BuildOnly, _ = p.boolean(v, name, key)
		case "arch":
			if a, ok := p.str(v, name, key); ok {
				if norm, known := archNames[strings.ToLower(a)]; known {
					img.Arch, img.ArchLine = norm, p.line(kv.k)
				} else {
					p.fail(v, name, key, ErrSyntax, "unknown architecture %q (known: %s)", a, knownArchs())
				}
			}
		case "os":
			if o, ok := p.str(v, name, key); ok && o != "linux" {
				p.fail(v, name, key, ErrSyntax, "vessel builds linux images only, got %q", o)
			}
		default:
			if hint, ok := stackerOnly[key]; ok {
				msg := "stacker's " + key + " is not supported by vessel"
				if hint != "" {
					msg += ": " + hint
				}
				p.fail(kv.k, name, "", ErrUnknownKey, "%s", msg)
				continue
			}
			p.fail(kv.k, name, "", ErrUnknownKey, "unknown key %q (known keys: %s)", key, strings.Join(imageKeys, ", "))
		}
	}
	if _, ok := img.keyLines["from"]; !ok {
		p.fail(kn, name, "", ErrSyntax, "missing from: (write from: {type: scratch} for an empty base)")
	}
	if !img.BuildOnly {
		// The image is tagged NAME:latest in the store, so NAME must be a
		// store name (package reference); build_only images are never tagged.
		if r, err := reference.Parse(name); err != nil {
			p.fail(kn, name, "", ErrSyntax, "image name %q is not a store name (or mark the image build_only: true): %v", name, err)
		} else if r.Transport != reference.Store || r.Name != name {
			p.fail(kn, name, "", ErrSyntax, "image name %q is not a store name (or mark the image build_only: true)", name)
		}
	}
	if img.FullCommand != nil && (img.Entrypoint != nil || img.Cmd != nil) {
		p.fail(kn, name, "full_command", ErrSyntax, "full_command replaces entrypoint and cmd: write either full_command (line %d) or entrypoint/cmd, not both", img.KeyLine("full_command"))
	}
	if len(p.errs) > nerr {
		return nil
	}
	return img
}

var imageName = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$`)

// archNames maps the spellings vessel accepts to GOARCH names (what stacker
// and OCI platforms use).
var archNames = map[string]string{
	"amd64": "amd64", "x86_64": "amd64",
	"arm64": "arm64", "aarch64": "arm64",
	"arm": "arm", "386": "386", "i386": "386",
	"ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
	"mips64le": "mips64le", "loong64": "loong64",
}

func knownArchs() string {
	seen := map[string]bool{}
	var out []string
	for _, v := range archNames {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

var fromKeys = []string{"type", "url", "tag", "insecure", "hash"}

func (p *parser) from(image string, n *yaml.Node) From {
	var f From
	pairs, ok := p.mapping(n, image, "from", false)
	if !ok {
		return f
	}
	f.Line = p.line(n)
	var typeNode, hashNode *yaml.Node
	for _, kv := range pairs {
		switch kv.k.Value {
		case "type":
			typeNode = kv.v
			s, _ := p.str(kv.v, image, "from.type")
			f.Type = FromType(s)
		case "url":
			f.URL, _ = p.str(kv.v, image, "from.url")
		case "tag":
			f.Tag, _ = p.str(kv.v, image, "from.tag")
		case "insecure":
			f.Insecure, _ = p.boolean(kv.v, image, "from.insecure")
		case "hash":
			hashNode = kv.v
			if s, ok := p.str(kv.v, image, "from.hash"); ok {
				f.Hash = strings.TrimPrefix(strings.ToLower(s), "sha256:")
				if !sha256Hex.MatchString(f.Hash) {
					p.fail(kv.v, image, "from.hash", ErrSyntax, "want a sha256 in hex, got %q", s)
				}
			}
		default:
			p.fail(kv.k, image, "from", ErrUnknownKey, "unknown key %q (known keys: %s)", kv.k.Value, strings.Join(fromKeys, ", "))
		}
	}
	at := n
	if typeNode != nil {
		at = typeNode
	}
	if hashNode != nil && f.Type != Tar && f.Type != "" {
		p.fail(hashNode, image, "from.hash", ErrSyntax, "hash: pins a tarball: only type tar has one (type %s)", f.Type)
	}
	switch f.Type {
	case Scratch:
	case Tar:
		switch {
		case f.URL == "":
			p.fail(at, image, "from", ErrSyntax, "type tar needs url: (a path to a rootfs tarball)")
		case strings.HasPrefix(f.URL, "stacker://"):
			img, pth, ok := strings.Cut(strings.TrimPrefix(f.URL, "stacker://"), "/")
			if !ok || img == "" || pth == "" {
				p.fail(at, image, "from", ErrSyntax, "type tar: want url: stacker://IMAGE/PATH (a tarball in an image built earlier), got %q", f.URL)
				break
			}
			f.FromImage, f.ImagePath = img, "/"+pth
		case strings.Contains(f.URL, "://") && !isHTTP(f.URL):
			p.fail(at, image, "from", ErrSyntax, "type tar: unsupported url %q (a local path, stacker://IMAGE/PATH or http(s)://)", f.URL)
		case !isHTTP(f.URL):
			f.URL = p.abs(f.URL)
		}
	case OCI:
		// As stacker and skopeo split it: the directory ends at the first colon.
		r, err := reference.ParseLayout(f.URL)
		if err == nil && r.Tag == "" && f.Tag != "" {
			r, err = reference.ParseLayout(f.URL + ":" + f.Tag) // url: DIR plus tag: TAG
		}
		switch {
		case err != nil:
			p.fail(at, image, "from", ErrSyntax, "type oci needs url: DIR:TAG: %v", err)
		case r.Tag == "":
			p.fail(at, image, "from", ErrSyntax, "type oci needs url: DIR:TAG (or tag:), got %q", f.URL)
		case strings.Contains(p.abs(r.Dir), ":"):
			p.fail(at, image, "from", ErrSyntax, "type oci: the layout directory %q contains a colon; an oci reference ends the directory at the first colon", p.abs(r.Dir))
		default:
			f.URL, f.Tag = p.abs(r.Dir)+":"+r.Tag, ""
		}
	case Docker:
		if r, err := reference.Parse(f.URL); err != nil {
			p.fail(at, image, "from", ErrSyntax, "type docker needs url: docker://HOST/REPO[:TAG|@DIGEST]: %v", err)
		} else if r.Transport != reference.Docker {
			p.fail(at, image, "from", ErrSyntax, "type docker needs url: docker://HOST/REPO[:TAG|@DIGEST], got %q", f.URL)
		}
	case Built:
		if f.Tag == "" {
			p.fail(at, image, "from", ErrSyntax, "type built needs tag: NAME (an image of this file)")
		}
	case "":
		p.fail(n, image, "from", ErrSyntax, "missing type: (scratch, tar, oci, docker or built)")
	default:
		p.fail(at, image, "from", ErrSyntax, "unknown type %q (scratch, tar, oci, docker or built)", f.Type)
	}
	return f
}

func isHTTP(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// abs resolves a local path against the recipe directory, keeping a
// trailing slash (which means "the contents of this directory").
func (p *parser) abs(path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	out := filepath.Join(p.dir, path)
	if strings.HasSuffix(path, "/") {
		out += "/"
	}
	return out
}

var importKeys = []string{"path", "dest", "mode", "uid", "gid", "hash"}

var sha256Hex = lazyre.New(`^[0-9a-f]{64}$`)

func (p *parser) imports(image, key string, n *yaml.Node) []Import {
	d := p.deref(n)
	items := []*yaml.Node{d}
	if d != nil && d.Kind == yaml.SequenceNode {
		items = d.Content
	}
	var out []Import
	for _, it := range items {
		it = p.deref(it)
		imp := Import{Line: p.line(it)}
		switch {
		case it != nil && it.Kind == yaml.ScalarNode && it.Tag != "!!null":
			imp.Path = it.Value
		case it != nil && it.Kind == yaml.MappingNode:
			pairs, ok := p.mapping(it, image, key+" entry", false)
			if !ok {
				continue
			}
			for _, kv := range pairs {
				k := kv.k.Value
				switch k {
				case "path", "dest", "hash":
					s, ok := p.str(kv.v, image, key+"."+k)
					if !ok {
						continue
					}
					switch k {
					case "path":
						imp.Path = s
					case "dest":
						imp.Dest = s
					case "hash":
						imp.Hash = strings.TrimPrefix(strings.ToLower(s), "sha256:")
						if !sha256Hex.MatchString(imp.Hash) {
							p.fail(kv.v, image, key+".hash", ErrSyntax, "want a sha256 in hex, got %q", s)
						}
					}
				case "mode":
					if m, ok := p.uint(kv.v, image, key+".mode", 0o7777); ok {
						fm := fs.FileMode(m&0o777) | unixBits(m)
						imp.Mode = &fm
					}
				case "uid", "gid":
					if id, ok := p.uint(kv.v, image, key+"."+k, 1<<32-2); ok {
						v := int(id)
						if k == "uid" {
							imp.UID = &v
						} else {
							imp.GID = &v
						}
					}
				default:
					// stacker ignores keys it does not know here; vessel
					// warns, so a recipe that stacker builds builds too
					p.warn(kv.k, image, key, "unknown key %q in an import is ignored (known keys: %s)", k, strings.Join(importKeys, ", "))
				}
			}
		default:
			p.fail(it, image, key, ErrSyntax, "an import is a path or a mapping with path:, got %s", kindName(it))
			continue
		}
		if imp.Path == "" {
			p.fail(it, image, key, ErrSyntax, "an import needs a path")
			continue
		}
		if imp.Dest != "" && !strings.HasPrefix(imp.Dest, "/") {
			p.fail(it, image, key+".dest", ErrSyntax, "dest must be an absolute path in the image, got %q", imp.Dest)
		}
		switch {
		case strings.HasPrefix(imp.Path, "stacker://"):
			rest := strings.TrimPrefix(imp.Path, "stacker://")
			img, pth, ok := strings.Cut(rest, "/")
			if !ok || img == "" || pth == "" {
				p.fail(it, image, key, ErrSyntax, "want stacker://IMAGE/PATH, got %q", imp.Path)
				continue
			}
			imp.Source, imp.FromImage, imp.ImagePath = imp.Path, img, "/"+pth
		case isHTTP(imp.Path):
			imp.Source = imp.Path
		case strings.Contains(imp.Path, "://"):
			p.fail(it, image, key, ErrSyntax, "unsupported import URL %q (local paths and stacker://IMAGE/PATH work offline)", imp.Path)
			continue
		default:
			imp.Source = p.abs(imp.Path)
		}
		out = append(out, imp)
	}
	return out
}

// binds reads stacker's binds: a list whose entries are "SRC -> DEST",
// "SRC" (the same path inside) or a mapping {source: SRC, dest: DEST}.
func (p *parser) binds(image string, n *yaml.Node) []HostBind {
	d := p.deref(n)
	if d == nil || d.Kind != yaml.SequenceNode {
		p.fail(n, image, "binds", ErrSyntax, "expected a list of binds (\"SRC -> DEST\", \"SRC\" or {source: SRC, dest: DEST}), got %s", kindName(d))
		return nil
	}
	var out []HostBind
	for _, it := range d.Content {
		it = p.deref(it)
		b := HostBind{Line: p.line(it)}
		switch {
		case it != nil && it.Kind == yaml.ScalarNode && it.Tag != "!!null":
			src, dst, arrow := strings.Cut(it.Value, "->")
			b.Source = strings.TrimSpace(src)
			if arrow {
				b.Dest = strings.TrimSpace(dst)
			}
		case it != nil && it.Kind == yaml.MappingNode:
			pairs, ok := p.mapping(it, image, "binds entry", false)
			if !ok {
				continue
			}
			for _, kv := range pairs {
				switch kv.k.Value {
				case "source":
					b.Source, _ = p.str(kv.v, image, "binds.source")
				case "dest":
					b.Dest, _ = p.str(kv.v, image, "binds.dest")
				default:
					p.fail(kv.k, image, "binds", ErrUnknownKey, "unknown key %q in a bind (known keys: source, dest)", kv.k.Value)
				}
			}
		default:
			p.fail(it, image, "binds", ErrSyntax, "a bind is \"SRC -> DEST\", \"SRC\" or {source: SRC, dest: DEST}, got %s", kindName(it))
			continue
		}
		if b.Source == "" {
			p.fail(it, image, "binds", ErrSyntax, "a bind needs a source (a host path)")
			continue
		}
		if strings.Contains(b.Source, "://") {
			p.fail(it, image, "binds", ErrSyntax, "bind source %q: want a host path", b.Source)
			continue
		}
		b.Source = strings.TrimSuffix(p.abs(b.Source), "/")
		if b.Dest == "" {
			b.Dest = b.Source
		}
		if !strings.HasPrefix(b.Dest, "/") {
			p.fail(it, image, "binds.dest", ErrSyntax, "dest must be an absolute path in the container, got %q", b.Dest)
			continue
		}
		b.Dest = filepath.Clean(b.Dest)
		if b.Dest == "/" || reservedPath(b.Dest) {
			p.fail(it, image, "binds.dest", ErrSyntax, "cannot bind over %s: vessel mounts the root, /proc, /dev, /sys, /stacker and /vessel itself", b.Dest)
			continue
		}
		out = append(out, b)
	}
	return out
}

// reservedPath reports whether a container path is one the build mounts
// itself (or lies below one).
func reservedPath(p string) bool {
	for _, r := range []string{"/proc", "/dev", "/sys", "/stacker", "/vessel"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// overlayDirs reads stacker's overlay_dirs: a list of {source: DIR,
// dest: PATH} whose contents become part of the image at dest (default
// "/"). They are imports with dest: (a directory's contents copied into
// dest), so their content is in the cache key like any import's.
func (p *parser) overlayDirs(image string, n *yaml.Node) []Import {
	d := p.deref(n)
	if d == nil || d.Kind != yaml.SequenceNode {
		p.fail(n, image, "overlay_dirs", ErrSyntax, "expected a list of {source: DIR, dest: PATH}, got %s", kindName(d))
		return nil
	}
	var out []Import
	for _, it := range d.Content {
		it = p.deref(it)
		imp := Import{Line: p.line(it), Dest: "/"}
		pairs, ok := p.mapping(it, image, "overlay_dirs entry", false)
		if !ok {
			continue
		}
		for _, kv := range pairs {
			switch kv.k.Value {
			case "source":
				imp.Path, _ = p.str(kv.v, image, "overlay_dirs.source")
			case "dest":
				if s, ok := p.str(kv.v, image, "overlay_dirs.dest"); ok && s != "" {
					imp.Dest = s
				}
			default:
				p.fail(kv.k, image, "overlay_dirs", ErrUnknownKey, "unknown key %q in an overlay dir (known keys: source, dest)", kv.k.Value)
			}
		}
		if imp.Path == "" || strings.Contains(imp.Path, "://") {
			p.fail(it, image, "overlay_dirs", ErrSyntax, "an overlay dir needs source: (a host directory), got %q", imp.Path)
			continue
		}
		if !strings.HasPrefix(imp.Dest, "/") {
			p.fail(it, image, "overlay_dirs.dest", ErrSyntax, "dest must be an absolute path in the image, got %q", imp.Dest)
			continue
		}
		// The directory's contents go into dest.
		imp.Source = strings.TrimSuffix(p.abs(imp.Path), "/") + "/"
		if !strings.HasSuffix(imp.Dest, "/") {
			imp.Dest += "/"
		}
		out = append(out, imp)
	}
	return out
}

func unixBits(m uint64) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// uint reads an integer (0755 and 0o755 are octal, as in YAML 1.1 and stacker).
func (p *parser) uint(n *yaml.Node, image, key string, max uint64) (uint64, bool) {
	n = p.deref(n)
	if n != nil && n.Kind == yaml.ScalarNode {
		if v, err := strconv.ParseUint(n.Value, 0, 64); err == nil && v <= max {
			return v, true
		}
	}
	p.fail(n, image, key, ErrSyntax, "expected a number from 0 to %#o, got %s", max, kindName(n))
	return 0, false
}

func (p *parser) config(f *File, n *yaml.Node) {
	pairs, ok := p.mapping(n, "", "config", false)
	if !ok {
		return
	}
	for _, kv := range pairs {
		switch kv.k.Value {
		case "prerequisites":
			l, ok := p.strs(kv.v, "", "config.prerequisites")
			if !ok {
				continue
			}
			lines := make([]int, len(l))
			if d := p.deref(kv.v); d != nil && d.Kind == yaml.SequenceNode && len(d.Content) == len(l) {
				for i, e := range d.Content {
					lines[i] = p.line(e)
				}
			} else {
				for i := range lines {
					lines[i] = p.line(kv.v)
				}
			}
			for i, s := range l {
				if s == "" {
					p.fail(kv.v, "", "config.prerequisites", ErrSyntax, "a prerequisite is a recipe file name, got an empty string")
					continue
				}
				f.Prerequisites = append(f.Prerequisites, p.abs(s))
				f.prereqLines = append(f.prereqLines, lines[i])
			}
		default:
			p.fail(kv.k, "", "config", ErrUnknownKey, "unknown key %q (known keys: prerequisites)", kv.k.Value)
		}
	}
}

// validate checks what needs the whole file: references and cycles.
// Names not defined in the file must be in external, unless deferExternal.
func (p *parser) validate(f *File, external map[string]string, deferExternal bool) {
	for _, img := range f.Images {
		if img.From.FromImage == img.Name {
			p.errs = append(p.errs, &Error{File: p.file, Line: img.From.Line, Image: img.Name, Key: "from", Kind: ErrCycle, Msg: "an image cannot be built on a tarball inside itself"})
		}
		if img.From.Type == Built && img.From.Tag == img.Name {
			p.errs = append(p.errs, &Error{File: p.file, Line: img.From.Line, Image: img.Name, Key: "from", Kind: ErrCycle, Msg: "an image cannot be built on itself"})
		}
	}
	if !deferExternal {
		p.errs = append(p.errs, unknownRefs(f, external)...)
	}
	if len(p.errs) > 0 {
		return
	}
	if cyc := findCycle(f); cyc != nil {
		first := f.Image(cyc[0])
		p.errs = append(p.errs, &Error{File: p.file, Line: first.Line, Image: first.Name, Kind: ErrCycle,
			Msg: "images depend on each other in a cycle: " + strings.Join(cyc, " -> ")})
	}
}

// unknownRefs reports every `built` base and stacker:// source of f that is
// neither an image of f nor in external (image name -> defining file).
func unknownRefs(f *File, external map[string]string) []error {
	var errs []error
	where := func() string {
		if len(external) == 0 {
			s := fmt.Sprintf("an image of this file (images: %s)", strings.Join(imageNames(f), ", "))
			if len(f.Prerequisites) > 0 {
				s += "; its prerequisites were not read"
			}
			return s
		}
		files := []string{}
		seen := map[string]bool{}
		for _, file := range external {
			if !seen[file] {
				seen[file] = true
				files = append(files, file)
			}
		}
		sort.Strings(files)
		names := imageNames(f)
		for n := range external {
			names = append(names, n)
		}
		sort.Strings(names)
		return fmt.Sprintf("an image of this file or of its prerequisites (searched %s, %s; images: %s)",
			f.Path, strings.Join(files, ", "), strings.Join(names, ", "))
	}
	known := func(n string) bool {
		if f.Image(n) != nil {
			return true
		}
		_, ok := external[n]
		return ok
	}
	for _, img := range f.Images {
		if img.From.Type == Built && img.From.Tag != img.Name && !known(img.From.Tag) {
			errs = append(errs, &Error{File: f.Path, Line: img.From.Line, Image: img.Name, Key: "from", Kind: ErrMissingBase,
				Msg: fmt.Sprintf("built base %q is not %s", img.From.Tag, where())})
		}
		if img.From.FromImage != "" && img.From.FromImage != img.Name && !known(img.From.FromImage) {
			errs = append(errs, &Error{File: f.Path, Line: img.From.Line, Image: img.Name, Key: "from", Kind: ErrMissingBase,
				Msg: fmt.Sprintf("%s: %q is not %s", img.From.URL, img.From.FromImage, where())})
		}
		for _, imp := range img.Imports {
			if imp.FromImage != "" && !known(imp.FromImage) {
				errs = append(errs, &Error{File: f.Path, Line: imp.Line, Image: img.Name, Key: "imports", Kind: ErrMissingBase,
					Msg: fmt.Sprintf("%s: %q is not %s", imp.Path, imp.FromImage, where())})
			}
		}
	}
	return errs
}

func imageNames(f *File) []string {
	out := make([]string, len(f.Images))
	for i, img := range f.Images {
		out[i] = img.Name
	}
	return out
}

// localNeeds is img.Needs() without the images of other files.
func (f *File) localNeeds(img *Image) []string {
	var out []string
	for _, n := range img.Needs() {
		if f.Image(n) != nil {
			out = append(out, n)
		}
	}
	return out
}

// findCycle returns one dependency cycle as a list of names that starts and
// ends with the same image, or nil.
func findCycle(f *File) []string {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	var found []string
	var visit func(string) bool
	visit = func(n string) bool {
		color[n] = grey
		stack = append(stack, n)
		for _, d := range f.localNeeds(f.Image(n)) {
			switch color[d] {
			case grey:
				for i, s := range stack {
					if s == d {
						found = append(append([]string{}, stack[i:]...), d)
					}
				}
				return true
			case white:
				if visit(d) {
					return true
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[n] = black
		return false
	}
	for _, img := range f.Images {
		if color[img.Name] == white && visit(img.Name) {
			return found
		}
	}
	return nil
}
