package manifest

import (
	"bytes"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// SetCapabilities returns system.yaml text src with the capabilities: list
// of service name replaced by caps (written in flow style with the names
// as given), or added after its image: line. Every other byte is kept,
// comments included. The result is parsed again and must give the service
// exactly caps.
func SetCapabilities(src []byte, name string, caps []string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fmt.Errorf("parse system.yaml: %w", err)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("system.yaml: not a mapping")
	}
	svcs := mapValue(doc.Content[0], "services")
	if svcs == nil || svcs.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("system.yaml: no services list")
	}
	var svc *yaml.Node
	for _, s := range svcs.Content {
		if n := mapValue(s, "name"); n != nil && n.Value == name {
			svc = s
		}
	}
	if svc == nil {
		return nil, fmt.Errorf("system.yaml: no service named %q", name)
	}
	lines := strings.SplitAfter(string(src), "\n")
	value := "[" + strings.Join(caps, ", ") + "]"
	var out []string
	if key, val := mapKeyValue(svc, "capabilities"); key != nil {
		first, last := key.Line-1, lastLine(val)-1
		orig := lines[first]
		nl := ""
		if strings.HasSuffix(orig, "\n") {
			nl = "\n"
		}
		if strings.HasSuffix(lines[last], "\n") {
			nl = "\n"
		}
		line := orig[:key.Column-1] + "capabilities: " + value
		if c := val.LineComment; c != "" && first == last {
			line += " " + c
		}
		out = append(append(append(out, lines[:first]...), line+nl), lines[last+1:]...)
	} else {
		anchor, aval := mapKeyValue(svc, "image")
		if anchor == nil {
			anchor, aval = mapKeyValue(svc, "name")
		}
		at := lastLine(aval) // insert after this line (1-based index = position)
		line := strings.Repeat(" ", anchor.Column-1) + "capabilities: " + value + "\n"
		if at > len(lines) || (at == len(lines) && !strings.HasSuffix(lines[at-1], "\n")) {
			lines[len(lines)-1] += "\n"
		}
		out = append(append(append(out, lines[:at]...), line), lines[at:]...)
	}
	res := []byte(strings.Join(out, ""))
	sys, err := ParseSystem("system.yaml", res)
	if err != nil {
		return nil, fmt.Errorf("system.yaml after setting capabilities: %w", err)
	}
	for _, s := range sys.Services {
		if s.Name == name && (s.Capabilities.Default || !s.Capabilities.Given || !bytes.Equal([]byte(strings.Join(s.Capabilities.Names, ",")), []byte(strings.Join(caps, ",")))) {
			return nil, fmt.Errorf("system.yaml after setting capabilities: service %s has %v, want %v", name, s.Capabilities, caps)
		}
	}
	return res, nil
}

func mapKeyValue(m *yaml.Node, key string) (*yaml.Node, *yaml.Node) {
	if m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	_, v := mapKeyValue(m, key)
	return v
}

// lastLine is the last line a value node occupies (block sequences of
// scalars span one line per item).
func lastLine(n *yaml.Node) int {
	l := n.Line
	for _, c := range n.Content {
		if e := lastLine(c); e > l {
			l = e
		}
	}
	return l
}
