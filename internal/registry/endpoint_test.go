package registry

import (
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/store"
)

// An endpoint names itself in errors: an untagged store destination (what
// install and the network boot copy into) too.
func TestEndpointString(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		e    Endpoint
		want string
	}{
		{Store(s, "app:1"), "app:1"},
		{Store(s, ""), "the store at " + s.Root() + " (untagged)"},
		{Layout("/l", ""), "oci:/l"},
		{Layout("/l", "v1"), "oci:/l:v1"},
	} {
		if got := c.e.String(); got != c.want {
			t.Errorf("String() = %q, want %q", got, c.want)
		}
		if strings.HasSuffix(c.e.String(), " ") || c.e.String() == "" {
			t.Errorf("%+v names itself %q", c.e, c.e.String())
		}
	}
}
