package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// The kinds of file a user may hand a command that wanted another: each
// error says what the file is; the CLI adds what to do with it.
var (
	ErrSystemYAML       = errors.New("this is a system.yaml (the source of a system manifest)")
	ErrUnsignedManifest = errors.New("this is an unsigned system manifest")
	ErrSignedManifest   = errors.New("this is a signed system manifest")
)

// FileKind is what a manifest-related file is.
type FileKind int

const (
	KindUnknown    FileKind = iota
	KindSystemYAML          // system.yaml, for vessel manifest build
	KindManifest            // a built, unsigned manifest, for vessel manifest sign
	KindSigned              // a signed manifest, for up, verify, install
)

// signedMediaType is trust.SignedMediaType (trust imports this package).
const signedMediaType = "application/vnd.vessel.signed-manifest.v1+json"

var kindErr = map[FileKind]error{KindSystemYAML: ErrSystemYAML, KindManifest: ErrUnsignedManifest, KindSigned: ErrSignedManifest}

var kindName = map[FileKind]string{KindSystemYAML: "a system.yaml", KindManifest: "an unsigned manifest", KindSigned: "a signed manifest"}

// Kind tells a system.yaml, a built manifest and a signed manifest apart
// by their top-level keys, without validating them; anything else is
// KindUnknown.
func Kind(b []byte) FileKind {
	var top map[string]json.RawMessage
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(t))
		if err := dec.Decode(&top); err != nil {
			return KindUnknown
		}
		var mt string
		_ = json.Unmarshal(top["mediaType"], &mt)
		_, payload := top["payload"]
		_, sig := top["signature"]
		_, product := top["product"]
		switch {
		case mt == signedMediaType || payload && sig:
			return KindSigned
		case mt == MediaType || product && mt == "":
			return KindManifest
		}
		return KindUnknown
	}
	var y map[string]any
	if err := yaml.Unmarshal(b, &y); err != nil || y == nil {
		return KindUnknown
	}
	_, product := y["product"]
	_, services := y["services"]
	if product || services {
		return KindSystemYAML
	}
	return KindUnknown
}

// WrongFile returns an error naming what b is when it is one of the
// manifest kinds other than want, and nil otherwise. Parsers call it on
// their error path, so that a file of the wrong kind is named as such
// instead of by the first key the parser did not expect.
func WrongFile(b []byte, want FileKind) error {
	k := Kind(b)
	if k == KindUnknown || k == want {
		return nil
	}
	return fmt.Errorf("%w, not %s", kindErr[k], kindName[want])
}
