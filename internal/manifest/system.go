package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSystemSize bounds a system.yaml file.
const MaxSystemSize = 1 << 20

// System is a system.yaml file: what a person writes before the image
// references are pinned to digests by Build.
type System struct {
	Product  string        `yaml:"product"` // product name or UUID
	Version  int64         `yaml:"version"`
	Hostfs   string        `yaml:"hostfs"` // image reference, optional
	Services []ServiceSpec `yaml:"services"`
	// HealthSeconds: how long a trial boot's services must stay healthy.
	HealthSeconds int64 `yaml:"healthSeconds"`
}

// ServiceSpec is one service in system.yaml.
type ServiceSpec struct {
	Name         string       `yaml:"name"`
	Image        string       `yaml:"image"`
	Command      StringList   `yaml:"command"`
	Args         StringList   `yaml:"args"`
	Env          Env          `yaml:"env"`
	User         string       `yaml:"user"`
	Restart      string       `yaml:"restart"`
	Capabilities Capabilities `yaml:"capabilities"`
	Network      string       `yaml:"network"`
	Ports        []string     `yaml:"ports"`   // "HOST:CONTAINER[/udp]" or "PORT[/udp]"
	Volumes      []string     `yaml:"volumes"` // "NAME:/path"
	ReadOnly     bool         `yaml:"readonly"`
	Init         bool         `yaml:"init"` // a tiny init as PID 1 (vessel run --init)
	// UserNS: "auto" (a subordinate id range of its own) or "group:NAME"
	// (a range shared with the group's other services); see docs/userns.md.
	UserNS string `yaml:"userns"`
	// Health: a command the host runs during a trial boot (exit 0: healthy).
	Health StringList `yaml:"health"`
}

// Capabilities is a service's capabilities: key in system.yaml: a list of
// names ("NET_RAW" or "CAP_NET_RAW"), where an empty list means none, or
// the word "default" for the runtime's default set (Docker's 14). A service
// without the key gets none (Given is false): least privilege unless
// declared (issue 19; before it a missing or empty list meant the default
// set, see docs/caps.md).
type Capabilities struct {
	Names   []string
	Default bool // "capabilities: default"
	Given   bool // the key was present
}

// UnmarshalYAML accepts a sequence of names or the scalar "default" (or
// "none", the same as []).
func (c *Capabilities) UnmarshalYAML(n *yaml.Node) error {
	*c = Capabilities{Given: true}
	if n.Kind == yaml.ScalarNode {
		switch n.Value {
		case "default":
			c.Default = true
			return nil
		case "none":
			c.Names = []string{}
			return nil
		}
		return fmt.Errorf("line %d: capabilities: %q: want a list of names (e.g. [NET_BIND_SERVICE]; [] for none), none or default", n.Line, n.Value)
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	if l == nil {
		l = []string{}
	}
	c.Names = l
	return nil
}

// String is the list as system.yaml says it, for messages.
func (c Capabilities) String() string {
	if c.Default {
		return "default"
	}
	return "[" + strings.Join(c.Names, ", ") + "]"
}

// NoCapabilitiesKey returns the services that have no capabilities: key,
// which run with none; before issue 19 they got the default set, so
// manifest build says so.
func (s *System) NoCapabilitiesKey() []string {
	var out []string
	for _, svc := range s.Services {
		if !svc.Capabilities.Given {
			out = append(out, svc.Name)
		}
	}
	return out
}

// StringList is a YAML sequence of strings; a single scalar is a list of one
// (no shell splitting).
type StringList []string

// UnmarshalYAML accepts a scalar or a sequence of scalars.
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = StringList{n.Value}
		return nil
	}
	var s []string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*l = s
	return nil
}

// Env is a mapping of environment variables, or a sequence of KEY=VALUE.
type Env map[string]string

// UnmarshalYAML accepts a mapping or a sequence of KEY=VALUE strings.
func (e *Env) UnmarshalYAML(n *yaml.Node) error {
	m := Env{}
	switch n.Kind {
	case yaml.MappingNode:
		var raw map[string]string
		if err := n.Decode(&raw); err != nil {
			return err
		}
		for k, v := range raw {
			m[k] = v
		}
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		for i, kv := range l {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("line %d: env entry %q: want KEY=VALUE", n.Content[i].Line, kv)
			}
			if _, dup := m[k]; dup {
				return fmt.Errorf("line %d: env key %q given twice", n.Content[i].Line, k)
			}
			m[k] = v
		}
	default:
		return fmt.Errorf("line %d: env must be a mapping or a list of KEY=VALUE", n.Line)
	}
	*e = m
	return nil
}

// ParseSystem parses system.yaml strictly: one document, no unknown or
// duplicate keys (errors name the key and its line), at most MaxSystemSize
// bytes. name is used in error messages.
func ParseSystem(name string, b []byte) (*System, error) {
	if len(b) > MaxSystemSize {
		return nil, fmt.Errorf("%s: %d bytes is more than the %d allowed", name, len(b), MaxSystemSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, fmt.Errorf("%s: empty file", name)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, fmt.Errorf("%s:%d: more than one YAML document", name, extra.Line)
	}
	if err := checkKeys(name, &doc, reflect.TypeFor[System](), "", 0); err != nil {
		if werr := WrongFile(b, KindSystemYAML); werr != nil {
			return nil, fmt.Errorf("%s: %w", name, werr)
		}
		return nil, err
	}
	var sys System
	strict := yaml.NewDecoder(bytes.NewReader(b))
	strict.KnownFields(true)
	if err := strict.Decode(&sys); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %s", name, strings.Join(te.Errors, "; "))
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &sys, nil
}

// checkKeys walks the YAML tree against t and reports the first mapping key
// t does not know, with its line and the keys that are allowed.
func checkKeys(file string, n *yaml.Node, t reflect.Type, ctx string, depth int) error {
	if depth > 32 {
		return fmt.Errorf("%s:%d: nested too deeply", file, n.Line)
	}
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			if err := checkKeys(file, c, t, ctx, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if n.Kind == yaml.AliasNode {
		return fmt.Errorf("%s:%d: YAML aliases are not allowed in system.yaml", file, n.Line)
	}
	if t == reflect.TypeFor[Capabilities]() {
		return nil // its own UnmarshalYAML checks it
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return fmt.Errorf("%s:%d: %s must be a mapping", file, n.Line, orTop(ctx))
		}
		fields := map[string]reflect.Type{}
		var known []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			fields[k] = f.Type
			known = append(known, k)
		}
		sort.Strings(known)
		sub := ctx
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "name" && t == reflect.TypeFor[ServiceSpec]() {
				sub = "service " + strconv.Quote(n.Content[i+1].Value)
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("%s:%d: unknown key %q in %s (known keys: %s)", file, k.Line, k.Value, orTop(sub), strings.Join(known, ", "))
			}
			if err := checkKeys(file, v, ft, sub+"."+k.Value, depth+1); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind == yaml.SequenceNode {
			for i, c := range n.Content {
				if err := checkKeys(file, c, t.Elem(), fmt.Sprintf("%s[%d]", ctx, i), depth+1); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func orTop(ctx string) string {
	if ctx == "" {
		return "the top level"
	}
	return strings.TrimPrefix(ctx, ".")
}

// parsePort parses "HOST:CONTAINER[/tcp|/udp]" or "PORT[/proto]".
func parsePort(s string) (Port, error) {
	spec, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "tcp"
	}
	h, c, ok := strings.Cut(spec, ":")
	if !ok {
		c = h
	}
	hp, err1 := strconv.ParseUint(h, 10, 16)
	cp, err2 := strconv.ParseUint(c, 10, 16)
	if err1 != nil || err2 != nil || hp == 0 || cp == 0 || (proto != "tcp" && proto != "udp") {
		return Port{}, fmt.Errorf("port %q: want HOST:CONTAINER[/tcp|/udp] with ports 1-65535", s)
	}
	return Port{Host: uint16(hp), Container: uint16(cp), Protocol: proto}, nil
}

// parseVolume parses "NAME:/path".
func parseVolume(s string) (Volume, error) {
	n, p, ok := strings.Cut(s, ":")
	if !ok {
		return Volume{}, fmt.Errorf("volume %q: want NAME:/path", s)
	}
	return Volume{Name: n, Path: p}, nil
}
