// Package binfmt registers qemu-user emulators with the kernel's
// binfmt_misc so that images of other architectures run here: an arm64
// binary executed in a build or run container is handed to
// /usr/bin/qemu-aarch64-static.
//
// Registrations are data first: an Entry is one binfmt_misc rule, parsed
// from the systemd binfmt.d files Debian's qemu-user-static package ships
// (/usr/lib/binfmt.d/qemu-*.conf) or from the kernel's
// /proc/sys/fs/binfmt_misc/NAME files (Read). Plan turns the wanted
// architectures into entries; Install writes them to the register file
// with the F flag (the kernel opens the interpreter at registration, so it
// works inside containers and user namespaces whose root does not have
// it); Remove deletes only entries vessel made (named vessel-qemu-*).
//
// Callers: cmd/vessel (vessel binfmt), package build and vessel run
// (Check before running a foreign-architecture binary).
package binfmt

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vesselos/vessel/internal/platform"
)

// Dir is where binfmt_misc is mounted.
const Dir = "/proc/sys/fs/binfmt_misc"

// ConfDir is where Debian's qemu-user-static installs its binfmt.d rules.
const ConfDir = "/usr/lib/binfmt.d"

// Prefix starts the name of every entry vessel registers; Remove touches
// no other entry.
const Prefix = "vessel-qemu-"

// Package is the Debian package that ships the emulators and their rules.
const Package = "qemu-user-static"

// ErrNotInstalled means the emulator or its binfmt.d rule is missing.
var ErrNotInstalled = errors.New(Package + " is not installed")

// ErrNotRegistered means no enabled binfmt_misc entry with the F flag runs
// binaries of an architecture.
var ErrNotRegistered = errors.New("no emulator is registered")

// NotRegisteredError says which architecture has no emulator; it matches
// ErrNotRegistered with errors.Is.
type NotRegisteredError struct {
	Arch   string // the architecture, as binfmt names it (arm64, riscv64, ...)
	Reason string // what is missing
}

func (e *NotRegisteredError) Error() string {
	return fmt.Sprintf("%s binaries cannot run here: %s (register an emulator for %s as root; it needs Debian's %s)", e.Arch, e.Reason, e.Arch, Package)
}

func (e *NotRegisteredError) Is(target error) bool { return target == ErrNotRegistered }

// Entry is one binfmt_misc rule.
type Entry struct {
	Name string `json:"name"`
	// Type is "M" (magic bytes) or "E" (file name extension).
	Type   string `json:"type"`
	Offset int    `json:"offset,omitempty"`
	// Magic and Mask are the bytes compared at Offset (type M);
	// Extension is the file name extension (type E).
	Magic       []byte `json:"-"`
	Mask        []byte `json:"-"`
	Extension   string `json:"extension,omitempty"`
	Interpreter string `json:"interpreter"`
	Flags       string `json:"flags"`
	// Enabled is read from the kernel (Read); Arch is the GOARCH the
	// magic matches ("" if none vessel knows).
	Enabled bool   `json:"enabled"`
	Arch    string `json:"arch,omitempty"`
	// Ours reports a vessel entry (Name starts with Prefix).
	Ours bool `json:"ours"`
}

// HasFlag reports whether flag (one letter) is set.
func (e Entry) HasFlag(f byte) bool { return strings.IndexByte(e.Flags, f) >= 0 }

// Line is what is written to the register file: every magic and mask byte
// escaped as \xNN, so no byte can be read as the ':' separator.
func (e Entry) Line() string {
	esc := func(b []byte) string {
		var s strings.Builder
		for _, c := range b {
			fmt.Fprintf(&s, `\x%02x`, c)
		}
		return s.String()
	}
	if e.Type == "E" {
		return fmt.Sprintf(":%s:E::%s::%s:%s", e.Name, e.Extension, e.Interpreter, e.Flags)
	}
	return fmt.Sprintf(":%s:M:%d:%s:%s:%s:%s", e.Name, e.Offset, esc(e.Magic), esc(e.Mask), e.Interpreter, e.Flags)
}

// ParseConf reads one binfmt.d rule (":name:type:offset:magic:mask:interpreter:flags",
// with \xNN escapes), as systemd-binfmt and the kernel's register file take it.
func ParseConf(line string) (Entry, error) {
	line = strings.TrimSpace(line)
	if len(line) < 2 {
		return Entry{}, errors.New("binfmt rule is empty")
	}
	sep := line[0]
	f := strings.Split(line[1:], string(sep))
	if len(f) < 6 || len(f) > 7 {
		return Entry{}, fmt.Errorf("binfmt rule %q: want :name:type:offset:magic:mask:interpreter:flags", line)
	}
	e := Entry{Name: f[0], Type: f[1], Interpreter: f[5]}
	if len(f) == 7 {
		e.Flags = f[6]
	}
	if e.Name == "" || strings.ContainsAny(e.Name, "/") || e.Name == "." || e.Name == ".." || e.Name == "register" || e.Name == "status" {
		return Entry{}, fmt.Errorf("binfmt rule %q: bad name %q", line, e.Name)
	}
	var err error
	switch e.Type {
	case "M":
		if f[2] != "" {
			if e.Offset, err = strconv.Atoi(f[2]); err != nil || e.Offset < 0 {
				return Entry{}, fmt.Errorf("binfmt rule %s: offset %q", e.Name, f[2])
			}
		}
		if e.Magic, err = unescape(f[3]); err != nil {
			return Entry{}, fmt.Errorf("binfmt rule %s: magic: %w", e.Name, err)
		}
		if e.Mask, err = unescape(f[4]); err != nil {
			return Entry{}, fmt.Errorf("binfmt rule %s: mask: %w", e.Name, err)
		}
		if len(e.Magic) == 0 || (len(e.Mask) != 0 && len(e.Mask) != len(e.Magic)) {
			return Entry{}, fmt.Errorf("binfmt rule %s: %d magic bytes and %d mask bytes", e.Name, len(e.Magic), len(e.Mask))
		}
	case "E":
		e.Extension = f[3]
	default:
		return Entry{}, fmt.Errorf("binfmt rule %s: type %q (want M or E)", e.Name, e.Type)
	}
	if e.Interpreter == "" {
		return Entry{}, fmt.Errorf("binfmt rule %s: no interpreter", e.Name)
	}
	e.Ours = strings.HasPrefix(e.Name, Prefix)
	e.Arch = archOf(e)
	return e, nil
}

func unescape(s string) ([]byte, error) {
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '\\' {
			out = append(out, '\\')
			i++
			continue
		}
		if i+3 >= len(s) || s[i+1] != 'x' {
			return nil, fmt.Errorf("bad escape at byte %d of %q", i, s)
		}
		b, err := hex.DecodeString(s[i+2 : i+4])
		if err != nil {
			return nil, fmt.Errorf("bad escape at byte %d of %q", i, s)
		}
		out = append(out, b[0])
		i += 3
	}
	return out, nil
}

// elfHeader is the first 20 bytes of a static ELF executable of each
// architecture, as the kernel sees it (class, data, version, ET_EXEC, machine).
func elfHeader(arch string) []byte {
	h := func(class, data byte, machine uint16) []byte {
		b := []byte{0x7f, 'E', 'L', 'F', class, data, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0}
		if data == 1 {
			b[18], b[19] = byte(machine), byte(machine>>8)
		} else {
			b[16], b[17] = 0, 2
			b[18], b[19] = byte(machine>>8), byte(machine)
		}
		return b
	}
	switch arch {
	case "arm64":
		return h(2, 1, 183)
	case "arm":
		return h(1, 1, 40)
	case "amd64":
		return h(2, 1, 62)
	case "386":
		return h(1, 1, 3)
	case "ppc64le":
		return h(2, 1, 21)
	case "s390x":
		return h(2, 2, 22)
	case "riscv64":
		return h(2, 1, 243)
	case "mips64le":
		return h(2, 1, 8)
	case "loong64":
		return h(2, 1, 258)
	}
	return nil
}

// Matches reports whether e runs a file that starts with head.
func (e Entry) Matches(head []byte) bool {
	if e.Type != "M" || e.Offset+len(e.Magic) > len(head) || (len(e.Mask) > 0 && len(e.Mask) != len(e.Magic)) {
		return false
	}
	for i, m := range e.Magic {
		k := byte(0xff)
		if len(e.Mask) > 0 {
			k = e.Mask[i]
		}
		if head[e.Offset+i]&k != m&k {
			return false
		}
	}
	return true
}

// archOf is the architecture whose executables e runs ("" if none or
// more than one).
func archOf(e Entry) string {
	found := ""
	for _, a := range platform.Known() {
		if h := elfHeader(a); h != nil && e.Matches(h) {
			if found != "" {
				return ""
			}
			found = a
		}
	}
	return found
}

// Status is what binfmt_misc holds.
type Status struct {
	// Mounted reports whether binfmt_misc is mounted at Dir; Enabled is
	// its global switch.
	Mounted bool    `json:"mounted"`
	Enabled bool    `json:"enabled"`
	Entries []Entry `json:"entries"`
}

// Read reads every entry registered in dir (Dir when ""). An unmounted
// binfmt_misc gives a Status with Mounted false and no error.
func Read(dir string) (*Status, error) {
	if dir == "" {
		dir = Dir
	}
	st := &Status{}
	b, err := os.ReadFile(filepath.Join(dir, "status"))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read binfmt_misc status: %w", err)
	}
	st.Mounted = true
	st.Enabled = strings.TrimSpace(string(b)) == "enabled"
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read binfmt_misc: %w", err)
	}
	for _, de := range des {
		if de.Name() == "register" || de.Name() == "status" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read binfmt_misc entry %s: %w", de.Name(), err)
		}
		e, err := parseProc(de.Name(), string(b))
		if err != nil {
			return nil, err
		}
		st.Entries = append(st.Entries, e)
	}
	return st, nil
}

// parseProc reads the kernel's description of one entry.
func parseProc(name, text string) (Entry, error) {
	e := Entry{Name: name, Ours: strings.HasPrefix(name, Prefix)}
	bad := func(line string) (Entry, error) {
		return Entry{}, fmt.Errorf("binfmt_misc entry %s: unexpected line %q", name, line)
	}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		k, v, _ := strings.Cut(line, " ")
		var err error
		switch k {
		case "enabled":
			e.Enabled = true
		case "disabled":
		case "interpreter":
			e.Interpreter = v
		case "flags:":
			e.Flags = v
		case "flags":
			e.Flags = strings.TrimPrefix(v, ": ")
		case "offset":
			e.Type = "M"
			if e.Offset, err = strconv.Atoi(v); err != nil {
				return bad(line)
			}
		case "magic":
			e.Type = "M"
			if e.Magic, err = hex.DecodeString(v); err != nil {
				return bad(line)
			}
		case "mask":
			if e.Mask, err = hex.DecodeString(v); err != nil {
				return bad(line)
			}
		case "extension":
			e.Type, e.Extension = "E", strings.TrimPrefix(v, ".")
		default:
			return bad(line)
		}
	}
	e.Arch = archOf(e)
	return e, nil
}

// Handler is the first enabled entry that runs arch's executables with the
// F flag. (binfmt_misc tries the newest registration first; vessel only
// adds an entry when none handles the architecture, so the order does not
// matter for the entries Install leaves.)
func (st *Status) Handler(arch string) (Entry, bool) {
	h := elfHeader(arch)
	for _, e := range st.Entries {
		if e.Enabled && e.HasFlag('F') && h != nil && e.Matches(h) {
			return e, true
		}
	}
	return Entry{}, false
}

// Check returns nil when binaries of arch run here: it is the machine's
// own architecture, or an emulator is registered with the F flag. The
// error says how to fix it.
func Check(arch string) error {
	a, err := platform.Arch(arch)
	if err != nil {
		return err
	}
	if native(a) {
		return nil
	}
	st, err := Read("")
	if err != nil {
		return err
	}
	if !st.Mounted && inUserNS() {
		// A rootless build or run: the namespace's /proc has no binfmt_misc
		// mounted, and exec uses the registrations of the parent namespace,
		// which cannot be read from here. The CLI checks before entering.
		return nil
	}
	if !st.Mounted {
		return &NotRegisteredError{Arch: a, Reason: "binfmt_misc is not mounted, " + ErrNotRegistered.Error()}
	}
	if !st.Enabled {
		return fmt.Errorf("%s binaries cannot run here: binfmt_misc is disabled (echo 1 > %s/status as root)", a, Dir)
	}
	if _, ok := st.Handler(a); !ok {
		return &NotRegisteredError{Arch: a, Reason: ErrNotRegistered.Error() + " for " + a + " with the F flag"}
	}
	return nil
}

// Plan returns the entries that make arches run here, from the qemu rules
// in confDir (ConfDir when ""): Debian's magic and mask, the static
// emulator /usr/bin/qemu-MACHINE-static (binDir overrides /usr/bin), the
// F flag only and a vessel name. The machine's own architecture (and i386
// on amd64) need no entry and are skipped. A missing rule or emulator is
// ErrNotInstalled, naming the package.
func Plan(arches []string, confDir, binDir string) ([]Entry, error) {
	if confDir == "" {
		confDir = ConfDir
	}
	if binDir == "" {
		binDir = "/usr/bin"
	}
	var out []Entry
	var missing []string
	for _, name := range arches {
		a, err := platform.Arch(name)
		if err != nil {
			return nil, err
		}
		if native(a) {
			continue
		}
		m := platform.Machine(a)
		conf := filepath.Join(confDir, "qemu-"+m+".conf")
		interp := filepath.Join(binDir, "qemu-"+m+"-static")
		b, err := os.ReadFile(conf)
		if err == nil {
			_, err = os.Stat(interp)
		}
		if errors.Is(err, os.ErrNotExist) {
			missing = append(missing, a+" ("+interp+", "+conf+")")
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("binfmt rule for %s: %w", a, err)
		}
		var e Entry
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' || line[0] == ';' {
				continue
			}
			if e, err = ParseConf(line); err != nil {
				return nil, fmt.Errorf("%s: %w", conf, err)
			}
			found = true
			break
		}
		if !found || e.Type != "M" || !e.Matches(elfHeader(a)) {
			return nil, fmt.Errorf("%s: no rule that matches %s executables", conf, a)
		}
		e.Name, e.Interpreter, e.Flags, e.Ours, e.Arch = Prefix+m, interp, "F", true, a
		out = append(out, e)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: no emulator for %s: install Debian's %s (apt-get install %s)", ErrNotInstalled, strings.Join(missing, ", "), Package, Package)
	}
	return out, nil
}

// inUserNS reports whether this process runs in a user namespace other
// than the initial one (its uid map is not the identity over all ids).
func inUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
}

// native reports architectures this machine runs without an emulator.
func native(arch string) bool {
	h := platform.Host().Architecture
	return arch == h || (h == "amd64" && arch == "386") || (h == "arm64" && arch == "arm" && armCompat())
}

// armCompat reports whether an arm64 kernel runs 32-bit arm binaries
// (not every arm64 CPU can); assume not, so an emulator is registered.
func armCompat() bool { return false }

// Result says what Install or Remove did with one entry.
type Result struct {
	Entry Entry `json:"entry"`
	// Action is "registered", "present" (ours, already there), "handled"
	// (another entry with the F flag already runs the architecture: left
	// alone) or "removed".
	Action string `json:"action"`
	By     string `json:"by,omitempty"` // the other entry for "handled"
}

// Install registers the planned entries in dir (Dir when "", mounting
// binfmt_misc there first when it is not). An architecture that an
// enabled F entry already handles (ours or Debian's) is left as it is.
func Install(dir string, entries []Entry) ([]Result, error) {
	if dir == "" {
		dir = Dir
		if err := mountBinfmt(dir); err != nil {
			return nil, err
		}
	}
	st, err := Read(dir)
	if err != nil {
		return nil, err
	}
	if !st.Mounted {
		return nil, fmt.Errorf("binfmt_misc is not mounted at %s", dir)
	}
	var out []Result
	for _, e := range entries {
		if h, ok := st.Handler(e.Arch); ok {
			r := Result{Entry: h, Action: "handled", By: h.Name}
			if h.Name == e.Name {
				r = Result{Entry: h, Action: "present"}
			}
			out = append(out, r)
			continue
		}
		// A disabled or F-less entry of ours is replaced.
		for _, old := range st.Entries {
			if old.Name == e.Name {
				if err := os.WriteFile(filepath.Join(dir, old.Name), []byte("-1"), 0); err != nil {
					return out, fmt.Errorf("remove stale binfmt entry %s: %w", old.Name, err)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "register"), []byte(e.Line()), 0); err != nil {
			return out, fmt.Errorf("register %s (%s): %w", e.Name, e.Interpreter, err)
		}
		e.Enabled = true
		out = append(out, Result{Entry: e, Action: "registered"})
	}
	return out, nil
}

// Remove unregisters vessel's entries in dir (Dir when ""): those of
// arches, or all of vessel's when arches is empty. Other entries stay.
func Remove(dir string, arches []string) ([]Result, error) {
	if dir == "" {
		dir = Dir
	}
	want := map[string]bool{}
	for _, name := range arches {
		a, err := platform.Arch(name)
		if err != nil {
			return nil, err
		}
		want[a] = true
	}
	st, err := Read(dir)
	if err != nil || !st.Mounted {
		return nil, err
	}
	var out []Result
	for _, e := range st.Entries {
		if !e.Ours || (len(want) > 0 && !want[e.Arch]) {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name), []byte("-1"), 0); err != nil {
			return out, fmt.Errorf("remove binfmt entry %s: %w", e.Name, err)
		}
		out = append(out, Result{Entry: e, Action: "removed"})
	}
	return out, nil
}

// Sort orders entries by name (Read returns them in directory order).
func (st *Status) Sort() {
	sort.Slice(st.Entries, func(i, j int) bool { return st.Entries[i].Name < st.Entries[j].Name })
}

// MagicHex is the magic as hex (for JSON and display).
func (e Entry) MagicHex() string { return hex.EncodeToString(e.Magic) }

// MarshalJSON adds the magic and mask as hex (vessel binfmt status --json).
func (e Entry) MarshalJSON() ([]byte, error) {
	type plain Entry
	return json.Marshal(struct {
		plain
		Magic string `json:"magic,omitempty"`
		Mask  string `json:"mask,omitempty"`
	}{plain(e), hex.EncodeToString(e.Magic), hex.EncodeToString(e.Mask)})
}
