package recipe

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/lazyre"
)

// ParseSubstitutions turns --substitute KEY=VAL arguments into a map. A key
// given twice keeps its last value, as stacker does.
func ParseSubstitutions(kvs []string) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !varName.MatchString(k) {
			return nil, fmt.Errorf("substitution %q: want KEY=VALUE with KEY made of letters, digits and _", kv)
		}
		m[k] = v
	}
	return m, nil
}

var (
	varName     = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]*$`)
	placeholder = lazyre.New(`\$\{\{([^{}:]*)(:[^{}]*)?\}\}`)
)

// substitute replaces ${{VAR}} and ${{VAR:default}} in text, before any YAML
// parsing (as stacker does, so image names and keys can be substituted too).
// It returns the new text and, for each of its lines, the line of the
// original it came from, so later errors point at what the user wrote.
func substitute(file string, text string, vars map[string]string) (string, []int, error) {
	var out strings.Builder
	lineOf := []int{0} // lineOf[n] = original line of output line n (1-based)
	var missing []string
	var firstLine int
	for i, line := range strings.SplitAfter(text, "\n") {
		n := i + 1
		var bad error
		size := out.Len() + len(line) // what the text grows to, bounded while substituting
		tooLarge := func() string {
			return fmt.Sprintf("after substitution the recipe is larger than %d bytes", MaxSize)
		}
		line = placeholder.ReplaceAllStringFunc(line, func(m string) string {
			if bad != nil {
				return m
			}
			sub := placeholder.FindStringSubmatch(m)
			name, def := sub[1], sub[2]
			if !varName.MatchString(name) {
				if bad == nil {
					bad = &Error{File: file, Line: n, Msg: fmt.Sprintf("bad substitution %s: a variable name is letters, digits and _", m), Kind: ErrSyntax}
				}
				return m
			}
			v, ok := vars[name]
			if !ok && def != "" {
				v, ok = def[1:], true
			}
			if ok {
				if size += len(v) - len(m); size > MaxSize {
					bad = &Error{File: file, Line: n, Kind: ErrSyntax, Msg: tooLarge()}
					return m
				}
				return v
			}
			if firstLine == 0 {
				firstLine = n
			}
			missing = append(missing, fmt.Sprintf("%s (line %d)", name, n))
			return m
		})
		if bad != nil {
			return "", nil, bad
		}
		out.WriteString(line)
		if out.Len() > MaxSize {
			return "", nil, &Error{File: file, Line: n, Kind: ErrSyntax, Msg: tooLarge()}
		}
		for range strings.Count(strings.TrimSuffix(line, "\n"), "\n") + 1 {
			lineOf = append(lineOf, n)
		}
	}
	if len(missing) > 0 {
		return "", nil, &Error{File: file, Line: firstLine, Kind: ErrUndefined,
			Msg: fmt.Sprintf("no value for %s: substitute a value or write ${{NAME:default}}", strings.Join(missing, ", "))}
	}
	return out.String(), lineOf, nil
}

// ReadSubstituteFile reads stacker's --substitute-file: a YAML mapping of
// KEY: VALUE (scalars; numbers and booleans as written). Values given with
// --substitute override the file's (the caller merges them).
func ReadSubstituteFile(path string) (map[string]string, error) {
	b, err := bounded.ReadFile(path, MaxSize)
	if err != nil {
		return nil, fmt.Errorf("read substitute file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("substitute file %s: not valid YAML: %w", path, err)
	}
	out := map[string]string{}
	if len(doc.Content) == 0 {
		return out, nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("substitute file %s:%d: want a mapping of KEY: VALUE", path, m.Line)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !varName.MatchString(k.Value) {
			return nil, fmt.Errorf("substitute file %s:%d: %q is not a variable name", path, k.Line, k.Value)
		}
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("substitute file %s:%d: %s: want a string value", path, v.Line, k.Value)
		}
		out[k.Value] = v.Value
	}
	return out, nil
}
