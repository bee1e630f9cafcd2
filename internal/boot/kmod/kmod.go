// Package kmod finds Linux kernel modules in a modules tree
// (/lib/modules/VERSION) and orders them for loading: each module's
// dependencies come from its own ELF ".modinfo" section (depends= and the
// "pre:" part of softdep=), not from depmod's output, so the order is what
// the kernel will check at load time.
//
// Modules may be plain .ko (Debian 12), .ko.xz, .ko.zst or .ko.gz; Open
// returns the uncompressed module either way (the signature Secure Boot
// checks is appended to the uncompressed module, so it survives).
//
// Callers that build an initrd use Tree.Resolve and Module.Open; the PID-1
// stage only needs the resulting order (see package initrd).
package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrNotFound is wrapped when a module is neither a file in the tree nor
// built into the kernel.
var ErrNotFound = errors.New("module not found")

// suffixes are the module file name endings Tree recognises.
var suffixes = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// Tree is an indexed modules tree.
type Tree struct {
	Dir     string            // /lib/modules/VERSION
	Version string            // the directory's base name, the kernel release
	files   map[string]string // module name -> path relative to Dir
	builtin map[string]bool   // modules built into the kernel (modules.builtin)
	aliases map[string][]string
}

// Module is one loadable module file.
type Module struct {
	Name    string   // normalised: '-' replaced by '_'
	Path    string   // relative to the tree, as found (may end in .xz/.zst/.gz)
	Depends []string // from .modinfo depends=
	Pre     []string // from .modinfo softdep= "pre:" (names or aliases)
	tree    *Tree
}

// Normalize returns the kernel's canonical module name: '-' and '_' are
// interchangeable in module names, the kernel uses '_'.
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// Open indexes the modules tree dir: every module file under it, the
// modules built into the kernel (modules.builtin) and the plain aliases of
// modules.alias (used only to resolve softdep names such as crypto-crc32c).
func Open(dir string) (*Tree, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("modules tree: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("modules tree %s: not a directory", dir)
	}
	t := &Tree{Dir: dir, Version: filepath.Base(filepath.Clean(dir)), files: map[string]string{}, builtin: map[string]bool{}, aliases: map[string][]string{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		name, ok := moduleName(d.Name())
		if !ok {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		// WalkDir is lexical: the first file of a name wins, deterministically.
		if _, dup := t.files[name]; !dup {
			t.files[name] = filepath.ToSlash(rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules tree %s: %w", dir, err)
	}
	if len(t.files) == 0 {
		return nil, fmt.Errorf("modules tree %s: no kernel modules (*.ko) found: want /lib/modules/VERSION", dir)
	}
	if err := eachLine(filepath.Join(dir, "modules.builtin"), func(l string) {
		if name, ok := moduleName(filepath.Base(l)); ok {
			t.builtin[name] = true
		}
	}); err != nil {
		return nil, fmt.Errorf("modules tree %s: %w", dir, err)
	}
	if err := eachLine(filepath.Join(dir, "modules.alias"), func(l string) {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			t.aliases[f[1]] = append(t.aliases[f[1]], Normalize(f[2]))
		}
	}); err != nil {
		return nil, fmt.Errorf("modules tree %s: %w", dir, err)
	}
	return t, nil
}

// eachLine calls fn for each non-empty line of a file; a missing file is
// no lines.
func eachLine(path string, fn func(string)) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" {
			fn(l)
		}
	}
	return s.Err()
}

func moduleName(file string) (string, bool) {
	for _, s := range suffixes {
		if strings.HasSuffix(file, s) {
			return Normalize(strings.TrimSuffix(file, s)), true
		}
	}
	return "", false
}

// Builtin reports whether the kernel has the module built in.
func (t *Tree) Builtin(name string) bool { return t.builtin[Normalize(name)] }

// Module reads one module's dependencies from its .modinfo section.
func (t *Tree) Module(name string) (*Module, error) {
	name = Normalize(name)
	rel, ok := t.files[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s in %s", ErrNotFound, name, t.Dir)
	}
	m := &Module{Name: name, Path: rel, tree: t}
	b, err := m.Bytes()
	if err != nil {
		return nil, err
	}
	info, err := ModInfo(b)
	if err != nil {
		return nil, fmt.Errorf("module %s (%s): %w", name, rel, err)
	}
	for _, kv := range info {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					m.Depends = append(m.Depends, Normalize(d))
				}
			}
		case "softdep":
			m.Pre = append(m.Pre, softdepPre(v)...)
		}
	}
	return m, nil
}

// softdepPre returns the names after "pre:" up to "post:" in a softdep value
// such as "pre: crc32c post: foo".
func softdepPre(v string) []string {
	var out []string
	pre := false
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if pre {
				out = append(out, f)
			}
		}
	}
	return out
}

// ModInfo returns the key=value strings of an ELF module's .modinfo section.
func ModInfo(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF kernel module: %w", err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section: not a kernel module")
	}
	data, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	var out []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if len(kv) > 0 {
			out = append(out, string(kv))
		}
	}
	return out, nil
}

// Bytes returns the uncompressed module.
func (m *Module) Bytes() ([]byte, error) {
	p := filepath.Join(m.tree.Dir, filepath.FromSlash(m.Path))
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", m.Name, err)
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(p, ".ko"):
		return raw, nil
	case strings.HasSuffix(p, ".xz"):
		xr, err := xz.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("module %s: xz: %w", m.Name, err)
		}
		r = xr
	case strings.HasSuffix(p, ".zst"):
		zr, err := zstd.NewReader(bytes.NewReader(raw), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("module %s: zstd: %w", m.Name, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(p, ".gz"):
		gr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("module %s: gzip: %w", m.Name, err)
		}
		r = gr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("module %s: decompress %s: %w", m.Name, m.Path, err)
	}
	return b, nil
}

// LoadPath is where the uncompressed module goes in an initrd, relative to
// its root: lib/modules/VERSION/<path without the compression suffix>.
func (m *Module) LoadPath() string {
	p := m.Path
	for _, s := range []string{".xz", ".zst", ".gz"} {
		p = strings.TrimSuffix(p, s)
	}
	return "lib/modules/" + m.tree.Version + "/" + p
}

// Resolution is the result of Resolve: the modules to load, dependencies
// first, and the requested names the kernel has built in.
type Resolution struct {
	Modules []*Module
	Builtin []string
}

// Resolve returns the named modules and everything they depend on in load
// order: every module after all of its depends= and softdep pre: modules.
// Names may use '-' or '_'. A requested module the kernel has built in is
// listed in Builtin, not loaded. Softdep names that are aliases (such as
// crypto-crc32c) resolve through modules.alias, preferring the "_generic"
// implementation, which works on every CPU. Ties are broken by the order
// of the request, then by name, so the result is deterministic.
func (t *Tree) Resolve(names []string) (*Resolution, error) {
	res := &Resolution{}
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var visit func(name string, soft bool, chain []string) error
	visit = func(raw string, soft bool, chain []string) error {
		name := Normalize(raw)
		if _, ok := t.files[name]; !ok {
			if t.builtin[name] {
				return nil
			}
			if soft {
				alias := t.alias(raw)
				if alias == "" {
					alias = t.alias(name)
				}
				if alias == "" {
					return nil // a soft dependency the kernel does not have: nothing to load
				}
				name = alias
			} else {
				if len(chain) == 0 {
					return fmt.Errorf("%w: %s is neither in %s nor built in", ErrNotFound, name, t.Dir)
				}
				return fmt.Errorf("%w: %s (needed by %s) is neither in %s nor built in", ErrNotFound, name, neededBy(chain), t.Dir)
			}
		}
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		state[name] = 1
		m, err := t.Module(name)
		if err != nil {
			return err
		}
		chain = append(chain, name)
		for _, p := range m.Pre {
			if err := visit(p, true, chain); err != nil {
				return err
			}
		}
		deps := append([]string(nil), m.Depends...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, false, chain); err != nil {
				return err
			}
		}
		state[name] = 2
		res.Modules = append(res.Modules, m)
		return nil
	}
	for _, n := range names {
		n = Normalize(n)
		if _, ok := t.files[n]; !ok && t.builtin[n] {
			res.Builtin = append(res.Builtin, n)
			continue
		}
		if err := visit(n, false, nil); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// neededBy reads a dependency chain back from the module that needs it:
// "dm_bufio <- dm_verity".
func neededBy(chain []string) string {
	r := make([]string, len(chain))
	for i, c := range chain {
		r[len(chain)-1-i] = c
	}
	return strings.Join(r, " <- ")
}

// alias returns the module file a softdep alias names, preferring a
// _generic implementation.
func (t *Tree) alias(name string) string {
	cands := t.aliases[name]
	for _, c := range cands {
		if _, ok := t.files[c]; ok && strings.HasSuffix(c, "_generic") {
			return c
		}
	}
	for _, c := range cands {
		if _, ok := t.files[c]; ok {
			return c
		}
	}
	return ""
}
