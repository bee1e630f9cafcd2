// The output module: every command writes through the functions here.
//
// Output rules:
//   - results go to stdout (cmd.OutOrStdout), progress, notes and warnings
//     to stderr (cmd.ErrOrStderr), never the other way round;
//   - --json prints one JSON document (printJSON) or, for commands that
//     stream, one compact event per line (jsonEvents) ending with a
//     "result" event (printResultEvent), and nothing else on stdout;
//   - JSON keys are camelCase; lists and maps are never null ([] and {}
//     when empty: jsonValue sees to it, TestJSONConventions checks it);
//   - progress bars only when stderr is a terminal (isTerminal);
//   - notes and warnings are one line: "vessel: note: ..." (warnf);
//   - errors are printed once, by main (printError), as
//     "vessel: <what failed>: <why>", followed by the hint the CLI knows
//     for the error, and the exit code is 1 (2 for usage errors, with a
//     hint naming the command's --help; 128+N when signal N, Ctrl-C or
//     SIGTERM, ended the command, printing nothing). Library errors never
//     name flags: the hints here do. usage.go makes cobra's argument and
//     flag errors usage errors and adds suggestions.

package main

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"

	"github.com/vesselos/vessel/internal/binfmt"
	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/recipe"
	"github.com/vesselos/vessel/internal/reference"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/supervise"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/userns"
)

// globals are the flags every command shares.
type globals struct {
	root string
	json bool

	rootFlag     bool // --root was given
	createsStore bool // the command may create a new store (usage.go)

	runOnce sync.Once
}

// storeRoot resolves the store directory: --root, $VESSEL_ROOT,
// /var/lib/vessel for root, $XDG_DATA_HOME/vessel (or ~/.local/share/vessel).
func (g *globals) storeRoot() (string, error) {
	if g.root != "" {
		return g.root, nil
	}
	if r := os.Getenv("VESSEL_ROOT"); r != "" {
		return r, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/vessel", nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "vessel"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no store directory: set --root or VESSEL_ROOT (%w)", err)
	}
	return filepath.Join(home, ".local", "share", "vessel"), nil
}

// runDir is the per-boot state directory (mounts, containers, services):
// $VESSEL_RUN, /run/vessel for root, $XDG_RUNTIME_DIR/vessel otherwise.
// /run/vessel gets a tmpfs of its own if /run is not one (mount.PrepareRun).
func (g *globals) runDir() string {
	if r := os.Getenv("VESSEL_RUN"); r != "" {
		return r
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" && os.Geteuid() != 0 {
		return filepath.Join(x, "vessel")
	}
	g.runOnce.Do(func() {
		if _, err := mount.PrepareRun(mount.DefaultRun); err != nil {
			warnf(os.Stderr, "warning", "%v; keeping run state on disk", err)
		}
	})
	return mount.DefaultRun
}

// printJSON writes v as one indented JSON document: the whole --json
// output of a command that does not stream.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(jsonValue(v))
}

// checkJSON, when set (by the tests), sees every value the CLI prints as
// JSON, before jsonValue.
var checkJSON func(v any)

// jsonValue is v as the CLI prints it: a copy in which nil slices and maps
// (but for fields marked omitempty or omitzero) are empty ones, so that
// JSON readers get [] and {}, never null, for an empty list or map.
// Values that marshal themselves (json.Marshaler) are left alone.
func jsonValue(v any) any {
	if checkJSON != nil {
		checkJSON(v)
	}
	if v == nil {
		return nil
	}
	return emptyNotNil(reflect.ValueOf(v)).Interface()
}

var (
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
)

// marshalsItself reports whether t (or *t) writes its own JSON.
func marshalsItself(t reflect.Type) bool {
	for _, m := range []reflect.Type{jsonMarshaler, textMarshaler} {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return true
		}
	}
	return false
}

func emptyNotNil(v reflect.Value) reflect.Value {
	t := v.Type()
	if marshalsItself(t) {
		return v
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		n := reflect.New(t.Elem())
		n.Elem().Set(emptyNotNil(v.Elem()))
		return n
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		n := reflect.New(t).Elem()
		n.Set(emptyNotNil(v.Elem()))
		return n
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 { // []byte is base64 text
			return v
		}
		n := reflect.MakeSlice(t, v.Len(), v.Len())
		for i := range v.Len() {
			n.Index(i).Set(emptyNotNil(v.Index(i)))
		}
		return n
	case reflect.Map:
		n := reflect.MakeMapWithSize(t, v.Len())
		for it := v.MapRange(); it.Next(); {
			n.SetMapIndex(it.Key(), emptyNotNil(it.Value()))
		}
		return n
	case reflect.Struct:
		n := reflect.New(t).Elem()
		n.Set(v)
		for i := range t.NumField() {
			f := t.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" && opts == "" {
				continue
			}
			fv := v.Field(i)
			if (fv.Kind() == reflect.Slice || fv.Kind() == reflect.Map) && fv.IsNil() &&
				(strings.Contains(","+opts+",", ",omitempty,") || strings.Contains(","+opts+",", ",omitzero,")) {
				continue // left out of the JSON
			}
			n.Field(i).Set(emptyNotNil(fv))
		}
		return n
	}
	return v
}

// jsonEvents returns the emitter of a --json event stream: each call
// writes one compact JSON line. Write errors are dropped: progress must
// not stop the work (the final printResultEvent reports them).
func jsonEvents(w io.Writer) func(v any) {
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	return func(v any) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(jsonValue(v))
	}
}

// printResultEvent prints v's JSON object with "event":"result" added: the
// last line of a --json event stream.
func printResultEvent(w io.Writer, v any) error {
	b, err := json.Marshal(jsonValue(v))
	if err != nil {
		return err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return err
	}
	fields["event"] = json.RawMessage(`"result"`)
	return json.NewEncoder(w).Encode(fields)
}

// isTerminal reports whether w is a terminal (progress bars go only there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && ociruntime.IsTerminal(f)
}

// warnf writes one "vessel: KIND: ..." line (KIND is note or warning).
func warnf(w io.Writer, kind, format string, args ...any) {
	fmt.Fprintf(w, "vessel: "+kind+": "+format+"\n", args...)
}

// printError prints a command's error, and the CLI's hint for it if it
// has one.
func printError(w io.Writer, err error) {
	fmt.Fprintf(w, "vessel: %v\n", err)
	if h := hint(err); h != "" && !strings.Contains(err.Error(), h) {
		fmt.Fprintf(w, "vessel: hint: %s\n", h)
	}
}

// hint is what the user can do about err, in terms of vessel's commands
// and flags (which the library does not know).
func hint(err error) string {
	var notRegistered *binfmt.NotRegisteredError
	var noSubIDs *userns.NoSubIDsError
	switch {
	case errors.As(err, &noSubIDs):
		return fmt.Sprintf("as root, run `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s` (pick a range no other user has) and try again", noSubIDs.User)
	case errors.Is(err, tpm.ErrExists):
		return "add --force to replace it"
	case errors.Is(err, tpm.ErrNotTPMKey):
		return "a PEM key file is given as --key FILE, without tpm:"
	case errors.Is(err, registry.ErrTooLarge):
		return "raise the limit with --max-blob-size if the blob is expected to be that large"
	case errors.Is(err, registry.ErrImageNotLocal):
		return "or push only the manifest and its signature with --no-images"
	case errors.Is(err, registry.ErrOtherArch):
		return "build a manifest for this machine's architecture with `vessel manifest build --arch`"
	case errors.Is(err, supervise.ErrNoLog):
		return "vessel ps lists the services"
	case errors.Is(err, trust.ErrNoCA):
		return "give the manifest-signing CA certificate with --ca"
	case errors.Is(err, recipe.ErrCacheCorrupt):
		return "run `vessel build --no-cache` to rebuild everything and rewrite the cache"
	case errors.Is(err, manifest.ErrProductName):
		return "give the product's UUID with --product-id, or its key directory with --keys"
	case errors.Is(err, manifest.ErrProductMismatch):
		return "the product in system.yaml and --product-id must agree"
	case errors.As(err, &notRegistered):
		return fmt.Sprintf("run 'vessel binfmt install --arch %s' as root", notRegistered.Arch)
	case errors.Is(err, secureboot.ErrExists):
		return "add --force to replace them (machines enrolled with the old keys will refuse what the new ones sign)"
	case errors.Is(err, image.ErrNoLayerDirs):
		return "give at least one --layer directory"
	case errors.Is(err, recipe.ErrUndefined):
		return "pass --substitute NAME=VALUE, or write ${{NAME:default}} in the recipe"
	case errors.Is(err, trust.ErrNoManifestCA):
		return "create the CAs first with `vessel keys init DIR --org NAME`"
	case errors.Is(err, manifest.ErrSystemYAML):
		return "build it into a manifest with `vessel manifest build FILE --keys DIR -o manifest.json`, then sign that with `vessel manifest sign`"
	case errors.Is(err, manifest.ErrUnsignedManifest):
		return "sign it first: `vessel manifest sign FILE --key product.key --cert product.pem -o manifest.signed`"
	case errors.Is(err, manifest.ErrSignedManifest):
		return "a signed manifest is what `vessel up`, `vessel manifest verify` and `vessel install` take"
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return "the registry speaks plain HTTP, not HTTPS: add --plain-http (only for a registry on loopback or a network you trust)"
	}
	return ""
}

// exitError carries a specific exit code (for example a container's) to main.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e exitError) Unwrap() error { return e.err }

// usageError marks errors caused by bad command-line use (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func isUsageError(err error) bool {
	var u usageError
	if errors.As(err, &u) {
		return true
	}
	// an image reference the user typed that breaks the reference grammar
	if errors.Is(err, reference.ErrInvalid) || errors.Is(err, reference.ErrUnsupportedTransport) {
		return true
	}
	// cobra's own argument and flag errors
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.Contains(s, "arg(s), received") ||
		strings.HasPrefix(s, "invalid argument") || strings.HasPrefix(s, "flag needs an argument")
}
