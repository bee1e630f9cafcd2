package manifest

import (
	"errors"
	"testing"
)

func TestKind(t *testing.T) {
	cases := []struct {
		in   string
		want FileKind
	}{
		{"product: demo\nversion: 1\nservices: []\n", KindSystemYAML},
		{`{"mediaType": "` + MediaType + `", "product": "x"}`, KindManifest},
		{`{"product": "x", "version": 1}`, KindManifest},
		{`{"mediaType": "application/vnd.vessel.signed-manifest.v1+json", "payload": "", "signature": ""}`, KindSigned},
		{`{"payload": "a", "signature": "b"}`, KindSigned},
		{`{"name": "x"}`, KindUnknown},
		{"name: x\n", KindUnknown},
		{"\x00\x01 binary", KindUnknown},
		{"", KindUnknown},
	}
	for _, c := range cases {
		if got := Kind([]byte(c.in)); got != c.want {
			t.Errorf("Kind(%q) = %d, want %d", c.in, got, c.want)
		}
	}
	if err := WrongFile([]byte("product: demo\n"), KindSigned); !errors.Is(err, ErrSystemYAML) {
		t.Errorf("WrongFile(system.yaml, signed) = %v", err)
	}
	if err := WrongFile([]byte("product: demo\n"), KindSystemYAML); err != nil {
		t.Errorf("WrongFile of the wanted kind = %v", err)
	}
	if _, err := Parse([]byte("product: demo\nversion: 1\n")); !errors.Is(err, ErrSystemYAML) || !errors.Is(err, ErrInvalid) {
		t.Errorf("Parse(system.yaml) = %v, want ErrSystemYAML and ErrInvalid", err)
	}
	if _, err := ParseSystem("m.json", []byte(`{"mediaType": "`+MediaType+`", "product": "x", "version": 1}`)); !errors.Is(err, ErrUnsignedManifest) {
		t.Errorf("ParseSystem(manifest) = %v, want ErrUnsignedManifest", err)
	}
}
