package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestPCR7Script runs the stories in testdata/pcr7 with the live-boot
// captures of internal/boot/pcr7/testdata (event logs, certificates, PCR7)
// copied into $WORK/ovmf and $WORK/ovmf-dbx.
func TestPCR7Script(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/pcr7",
		Setup: func(e *testscript.Env) error {
			for _, d := range []string{"ovmf", "ovmf-dbx"} {
				src := filepath.Join("..", "..", "internal", "boot", "pcr7", "testdata", d)
				files, err := os.ReadDir(src)
				if err != nil {
					return err
				}
				if err := os.Mkdir(filepath.Join(e.WorkDir, d), 0o755); err != nil {
					return err
				}
				for _, f := range files {
					b, err := os.ReadFile(filepath.Join(src, f.Name()))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(e.WorkDir, d, f.Name()), b, 0o644); err != nil {
						return err
					}
				}
			}
			return nil
		},
	})
}
