package manifest

import (
	"bytes"
	"testing"
)

// FuzzParse: the manifest parser never panics, and whatever it accepts
// re-encodes to a manifest that parses to the same encoding.
func FuzzParse(f *testing.F) {
	b, _ := validManifest().Marshal()
	f.Add(b)
	f.Add([]byte(`{"mediaType":"x","mediaType":"y"}`))
	f.Add([]byte(`{"services":[{"name":"a","ports":[{"host":1}]}]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := Parse(in)
		if err != nil {
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest does not marshal: %v", err)
		}
		m2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-encoded manifest does not parse: %v", err)
		}
		out2, _ := m2.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatal("encoding not stable")
		}
	})
}

// FuzzParseSystem: the system.yaml parser never panics.
func FuzzParseSystem(f *testing.F) {
	f.Add([]byte(systemYAML))
	f.Add([]byte("product: a\nservices: [{name: x, env: [A=1]}]\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		sys, err := ParseSystem("system.yaml", in)
		if err != nil {
			return
		}
		_, _ = Build(sys, newMem("x:latest"), BuildOptions{ProductID: pid})
	})
}
