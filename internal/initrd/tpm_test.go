package initrd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/measure"
)

func TestReportPCR15(t *testing.T) {
	m := measure.Manifest{Digest: "sha256:" + strings.Repeat("cd", 32), ProductID: "p", Version: 4}
	ev := measure.ManifestEvent(m)
	for _, c := range []struct {
		name  string
		pcr   []byte
		match bool
	}{
		{"replays", measure.ExtendSHA256(make([]byte, 32), []byte(ev.Data)), true},
		{"extended twice", measure.ExtendSHA256(measure.ExtendSHA256(make([]byte, 32), []byte(ev.Data)), []byte(ev.Data)), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			if err := (measure.Log{Path: root + measure.LogFile}).Append(ev); err != nil {
				t.Fatal(err)
			}
			pcrFile := root + fmt.Sprintf(PCRFile, measure.PCR)
			os.MkdirAll(filepath.Dir(pcrFile), 0o755)
			os.WriteFile(pcrFile, []byte(fmt.Sprintf("%X\n", c.pcr)), 0o444)
			var lines []string
			if err := reportPCR15(root, func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }); err != nil {
				t.Fatal(err)
			}
			if len(lines) != 1 {
				t.Fatalf("lines %q", lines)
			}
			want := fmt.Sprintf("events=1 match=%t manifest=%s version=4", c.match, m.Digest)
			if !strings.Contains(lines[0], want) {
				t.Fatalf("%q lacks %q", lines[0], want)
			}
		})
	}
}
