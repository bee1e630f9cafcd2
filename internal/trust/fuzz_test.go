package trust

import (
	"testing"
)

// FuzzParseSigned feeds arbitrary bytes to the signed-file parser and to
// Verify: neither may panic, and nothing but the genuine file may verify.
func FuzzParseSigned(f *testing.F) {
	p := newPKI(f, "Acme")
	signed := p.sign(f, 1)
	f.Add(signed)
	f.Add([]byte(`{"mediaType":"application/vnd.vessel.signed-manifest.v1+json","payload":"e30=","signature":"AA==","certificates":["AA=="]}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Add([]byte(`[[[[[[[[]]]]]]]]`))
	opts := p.opts()
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSigned(b)
		if err == nil {
			if _, err := s.Marshal(); err != nil {
				t.Fatalf("parsed file does not re-encode: %v", err)
			}
		}
		vm, err := Verify(b, opts)
		if err == nil && vm.ProductID() != p.pid {
			t.Fatalf("verified a manifest for product %s", vm.ProductID())
		}
	})
}
