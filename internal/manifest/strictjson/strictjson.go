// Package strictjson decodes untrusted JSON strictly: the input must be
// valid UTF-8 and one JSON value with nothing after it; object keys must be
// unique and must match a field of the target struct exactly (encoding/json
// alone accepts duplicate keys, keeping the last, and matches field names
// case-insensitively, so two parsers could read different documents).
//
// Package manifest and package trust use it for system manifests and signed
// files; use it for any JSON that crosses a trust boundary.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"unicode/utf8"
)

// MaxDepth bounds nesting of arrays and objects.
const MaxDepth = 32

// Unmarshal decodes data into v (a pointer) strictly.
func Unmarshal(data []byte, v any) error {
	if !utf8.Valid(data) {
		return errors.New("invalid UTF-8")
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return errors.New("strictjson: Unmarshal needs a non-nil pointer")
	}
	w := walker{b: data}
	if err := w.value(rv.Type().Elem(), "", 0); err != nil {
		return err
	}
	w.ws()
	if w.i != len(w.b) {
		return fmt.Errorf("trailing data after the JSON value (offset %d)", w.i)
	}
	// Every key is now known to match a field exactly, once; encoding/json
	// checks the syntax and the value types.
	return json.Unmarshal(data, v)
}

// walker is a minimal JSON scanner that checks structure and keys; it
// leaves full syntax checking to encoding/json.
type walker struct {
	b []byte
	i int
}

var byteSlice = reflect.TypeFor[[]byte]()

func where(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

func (w *walker) ws() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

func (w *walker) errEOF() error { return errors.New("unexpected end of input") }

func (w *walker) expect(c byte, path string) error {
	w.ws()
	if w.i >= len(w.b) {
		return w.errEOF()
	}
	if w.b[w.i] != c {
		return fmt.Errorf("%s: invalid character %q at offset %d, want %q", where(path), w.b[w.i], w.i, c)
	}
	w.i++
	return nil
}

// str consumes a string and returns its raw contents (without quotes).
func (w *walker) str() ([]byte, error) {
	w.i++ // opening quote
	start := w.i
	for w.i < len(w.b) {
		switch c := w.b[w.i]; {
		case c == '\\':
			w.i += 2
		case c == '"':
			w.i++
			return w.b[start : w.i-1], nil
		case c < 0x20:
			return nil, fmt.Errorf("control character in string at offset %d", w.i)
		default:
			w.i++
		}
	}
	return nil, w.errEOF()
}

func (w *walker) key() (string, error) {
	raw, err := w.str()
	if err != nil {
		return "", err
	}
	if !bytes.ContainsRune(raw, '\\') {
		return string(raw), nil
	}
	var k string
	if err := json.Unmarshal(w.b[w.i-len(raw)-2:w.i], &k); err != nil {
		return "", err
	}
	return k, nil
}

// value consumes one JSON value, checking it against t (nil: any).
func (w *walker) value(t reflect.Type, path string, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%s: nested more than %d levels", where(path), MaxDepth)
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	w.ws()
	if w.i >= len(w.b) {
		return w.errEOF()
	}
	switch w.b[w.i] {
	case '"':
		_, err := w.str()
		return err
	case '[':
		w.i++
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && t != byteSlice {
			elem = t.Elem()
		}
		w.ws()
		if w.i < len(w.b) && w.b[w.i] == ']' {
			w.i++
			return nil
		}
		for n := 0; ; n++ {
			if err := w.value(elem, fmt.Sprintf("%s[%d]", path, n), depth+1); err != nil {
				return err
			}
			w.ws()
			if w.i >= len(w.b) {
				return w.errEOF()
			}
			if w.b[w.i] == ']' {
				w.i++
				return nil
			}
			if err := w.expect(',', path); err != nil {
				return err
			}
		}
	case '{':
		w.i++
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = structFields(t)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		w.ws()
		if w.i < len(w.b) && w.b[w.i] == '}' {
			w.i++
			return nil
		}
		seen := map[string]bool{}
		for {
			w.ws()
			if w.i >= len(w.b) {
				return w.errEOF()
			}
			if w.b[w.i] != '"' {
				return fmt.Errorf("%s: invalid character %q at offset %d, want a key", where(path), w.b[w.i], w.i)
			}
			key, err := w.key()
			if err != nil {
				return err
			}
			kp := path + "." + key
			if path == "" {
				kp = key
			}
			if seen[key] {
				return fmt.Errorf("%s: duplicate key %q", where(path), key)
			}
			seen[key] = true
			ft := elem
			if fields != nil {
				var ok bool
				if ft, ok = fields[key]; !ok {
					return fmt.Errorf("%s: unknown key %q", where(path), key)
				}
			}
			if err := w.expect(':', kp); err != nil {
				return err
			}
			if err := w.value(ft, kp, depth+1); err != nil {
				return err
			}
			w.ws()
			if w.i >= len(w.b) {
				return w.errEOF()
			}
			if w.b[w.i] == '}' {
				w.i++
				return nil
			}
			if err := w.expect(',', path); err != nil {
				return err
			}
		}
	default:
		start := w.i
		for w.i < len(w.b) && isLiteralByte(w.b[w.i]) {
			w.i++
		}
		if w.i == start {
			return fmt.Errorf("%s: invalid character %q at offset %d", where(path), w.b[w.i], w.i)
		}
		return nil
	}
}

func isLiteralByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '+' || c == '.'
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// structFields maps the exact JSON names of t's fields to their types.
func structFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := computeFields(t)
	fieldCache.Store(t, m)
	return m
}

func computeFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range structFields(ft) {
					m[k] = v
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}
