package ociruntime

import (
	"context"
	"os/exec"
	"testing"
)

// BenchmarkRunTrue runs /bin/true through Run and through a bare `runc run`
// of the same bundle, so the package's overhead (log file, signal relay,
// state check) shows as the difference between the two.
func BenchmarkRunTrue(b *testing.B) {
	r := needRunc(b)
	root := busyboxRootfs(b)
	bun := bundle(b, Config{ID: "bench", Rootfs: root, Args: []string{"/bin/true"}})
	b.Run("vessel", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if code, err := r.Run(context.Background(), bun, "bench", Stdio{}); err != nil || code != 0 {
				b.Fatalf("code %d err %v", code, err)
			}
		}
	})
	b.Run("runc-bare", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			// Same stdio as the vessel case: /dev/null.
			if err := exec.Command(r.Path, "--root", r.StateRoot, "run", "--bundle", bun, "bench").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	assertNoState(b, r)
}
