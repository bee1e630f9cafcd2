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
	"io"
	"reflect"
	"strings"
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
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	w := walker{dec: dec}
	if err := w.value(rv.Type().Elem(), "", 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the JSON value (offset %d)", dec.InputOffset())
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	return nil
}

type walker struct{ dec *json.Decoder }

var byteSlice = reflect.TypeFor[[]byte]()

func where(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

// value consumes one JSON value, checking it against t (nil: any).
func (w *walker) value(t reflect.Type, path string, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%s: nested more than %d levels", where(path), MaxDepth)
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := w.dec.Token()
	if err != nil {
		if err == io.EOF {
			return errors.New("unexpected end of input")
		}
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // scalars: encoding/json checks their types
	}
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && t != byteSlice {
			elem = t.Elem()
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(elem, fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return err
			}
		}
		_, err := w.dec.Token() // ']'
		return err
	case '{':
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
		seen := map[string]bool{}
		for w.dec.More() {
			tok, err := w.dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
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
			if err := w.value(ft, kp, depth+1); err != nil {
				return err
			}
		}
		_, err := w.dec.Token() // '}'
		return err
	}
	return fmt.Errorf("%s: unexpected %v", where(path), d)
}

// structFields maps the exact JSON names of t's fields to their types.
func structFields(t reflect.Type) map[string]reflect.Type {
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
