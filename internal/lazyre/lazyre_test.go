package lazyre_test

import (
	"regexp"
	"testing"

	// Every package that declares lazy expressions, so that their
	// package-level New calls run and Sources lists them.
	_ "github.com/vesselos/vessel/internal/archive"
	_ "github.com/vesselos/vessel/internal/initrd"
	_ "github.com/vesselos/vessel/internal/ociruntime"
	_ "github.com/vesselos/vessel/internal/recipe"
	_ "github.com/vesselos/vessel/internal/reference"
	_ "github.com/vesselos/vessel/internal/tpm"
	_ "github.com/vesselos/vessel/internal/trust"

	"github.com/vesselos/vessel/internal/lazyre"
)

// registered is taken before any test adds expressions of its own.
var registered = lazyre.Sources()

// Every lazy expression compiles: a typo would otherwise only panic at
// its first use, not at start-up.
func TestAllCompile(t *testing.T) {
	srcs := registered
	if len(srcs) < 18 {
		t.Errorf("%d expressions registered, want the 18 of the packages imported above", len(srcs))
	}
	for _, src := range srcs {
		if _, err := regexp.Compile(src); err != nil {
			t.Errorf("%q: %v", src, err)
		}
	}
}

func TestLazyMatchesRegexp(t *testing.T) {
	r := lazyre.New(`^a(b+)c$`)
	if !r.MatchString("abbc") || r.MatchString("ac") {
		t.Error("MatchString disagrees with regexp")
	}
	if m := r.FindStringSubmatch("abbbc"); len(m) != 2 || m[1] != "bbb" {
		t.Errorf("FindStringSubmatch = %q", m)
	}
	if got := lazyre.New(`b+`).ReplaceAllStringFunc("abbcb", func(s string) string { return "<" + s + ">" }); got != "a<bb>c<b>" {
		t.Errorf("ReplaceAllStringFunc = %q", got)
	}
	if m := lazyre.New(`(\d)`).FindAllStringSubmatch("1a2", -1); len(m) != 2 || m[1][1] != "2" {
		t.Errorf("FindAllStringSubmatch = %q", m)
	}
}

func TestBadExpressionPanicsAtFirstUse(t *testing.T) {
	r := lazyre.New(`(`)
	defer func() {
		if recover() == nil {
			t.Error("a bad expression did not panic at its first use")
		}
	}()
	r.MatchString("x")
}
