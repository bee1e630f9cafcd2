package initrd

import (
	"slices"
	"strings"
	"testing"
)

func TestParseCluster(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		want    []string
		err     string
	}{
		{"console=ttyS0 vessel.ip=10.0.2.15/24", nil, ""},
		{"vessel.cluster=https://10.0.2.100:8443", []string{"https://10.0.2.100:8443"}, ""},
		{"a vessel.cluster=https://a:1,https://b:2 b", []string{"https://a:1", "https://b:2"}, ""},
		{"vessel.cluster=http://a:1", nil, "want https://HOST:PORT"},
		{"vessel.cluster=https://", nil, "want https://HOST:PORT"},
		{"vessel.cluster=https://a:1,", nil, "want https://HOST:PORT"},
	} {
		got, err := ParseCluster(c.cmdline)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want %q", c.cmdline, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v, %v; want %v", c.cmdline, got, err, c.want)
		}
	}
}
