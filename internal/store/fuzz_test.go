package store

import (
	"encoding/json"
	"testing"
)

// The OCI JSON readers take untrusted input (a layout from elsewhere, a
// tampered store): they must never panic, and whatever they accept must
// satisfy the checks they promise.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2}]}`))
	f.Add([]byte(`{"schemaVersion":2} {}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, err := ParseIndex(b)
		if err != nil {
			return
		}
		if idx.SchemaVersion != 2 {
			t.Fatalf("accepted schemaVersion %d", idx.SchemaVersion)
		}
		for _, d := range idx.Manifests {
			if d.Digest.Validate() != nil || d.Size < 0 || d.MediaType == "" {
				t.Fatalf("accepted bad descriptor %+v", d)
			}
		}
		if _, err := json.Marshal(idx); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"config":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if m.SchemaVersion != 2 || m.Config.Digest.Validate() != nil {
			t.Fatalf("accepted %+v", m)
		}
		for _, l := range m.Layers {
			if l.Digest.Validate() != nil || l.Size < 0 {
				t.Fatalf("accepted bad layer %+v", l)
			}
		}
	})
}
