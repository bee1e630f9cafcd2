package mount

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"
)

// With Warm set, the last user leaves its layer mounts in place, recorded
// as warm; the next mount shares them under the usual rules, a warm mount
// whose blob changed is replaced by a freshly verified one, expired warm
// state goes at the next mount, and Cleanup removes all of it (newEnv's
// clean-up checks that nothing is left).
func TestWarmLayers(t *testing.T) {
	e := newEnv(t)
	e.m.Warm = time.Hour
	img := testImage(t, e.s, "warm:1")
	target := func(id string) string { return filepath.Join(e.run, "containers", id, "rootfs") }
	mountAndUnmount := func(id string) {
		t.Helper()
		if _, err := e.m.Mount(context.Background(), img, id, target(id), Self(), Options{Writable: true}); err != nil {
			t.Fatalf("mount %s: %v", id, err)
		}
		if err := e.m.Unmount(id); err != nil {
			t.Fatalf("unmount %s: %v", id, err)
		}
	}
	layerDirs := []string{filepath.Join(layersDir(e.run), img.layers[0].hex()), filepath.Join(layersDir(e.run), img.layers[1].hex())}

	mountAndUnmount("c1")
	for _, d := range layerDirs {
		if !isMountPoint(d) {
			t.Errorf("%s: not mounted after its last user let go, want it warm", d)
		}
	}
	refs, _ := os.ReadDir(refsDir(e.run))
	var names []string
	for _, r := range refs {
		names = append(names, r.Name())
	}
	want := []string{img.layers[0].hex() + ".@warm", img.layers[1].hex() + ".@warm"}
	if !isTmpfs(e.run) {
		want = append(want, "uppers.@warm") // the scratch tmpfs stays too
		if !isMountPoint(upperDir(e.run, "")) {
			t.Error("the tmpfs of fresh uppers went, want it warm with the layers")
		}
	}
	sort.Strings(want)
	if sort.Strings(names); !slices.Equal(names, want) {
		t.Errorf("references after the last user: %v, want %v", names, want)
	}
	if rs, _ := os.ReadDir(mountsDir(e.run)); len(rs) != 0 {
		t.Errorf("%d mount records left, want none (warm state is no mount)", len(rs))
	}
	warm := WarmPaths(e.run)
	for _, p := range append(layerDirs, layerRecordPath(e.run, img.layers[0].hex()), filepath.Join(refsDir(e.run), want[0])) {
		if !warm[p] {
			t.Errorf("WarmPaths misses %s: %v", p, warm)
		}
	}

	// The next user shares both, nothing is mounted or verified again.
	before := e.m.Stats()
	mountAndUnmount("c2")
	if st := e.m.Stats(); st.LayersMounted != before.LayersMounted || st.LayersShared != before.LayersShared+2 {
		t.Errorf("second user: %+v (before %+v), want both warm layers shared", st, before)
	}

	// A blob rewritten in place: a warm mount nobody uses is not refused
	// but replaced, and the layer verified again.
	time.Sleep(10 * time.Millisecond) // a coarse clock must still see a new mtime
	blob := img.layers[0].blob
	if err := os.WriteFile(blob, []byte(read(t, blob)), 0o644); err != nil {
		t.Fatal(err)
	}
	before = e.m.Stats()
	mountAndUnmount("c3")
	if st := e.m.Stats(); st.Verified != before.Verified+1 || st.LayersMounted != before.LayersMounted+1 || st.LayersShared != before.LayersShared+1 {
		t.Errorf("after the blob was rewritten: %+v (before %+v), want the changed layer verified and mounted again, the other shared", st, before)
	}

	// Expired: the next mount takes the warm layers down first.
	e.m.Warm = time.Nanosecond
	before = e.m.Stats()
	mountAndUnmount("c4")
	if st := e.m.Stats(); st.LayersMounted != before.LayersMounted+2 {
		t.Errorf("after the grace period: %+v (before %+v), want both layers mounted afresh", st, before)
	}
	// Cleanup (in newEnv) takes down the warm state c4 left.
	if len(WarmPaths(e.run)) == 0 {
		t.Error("no warm state before Cleanup")
	}
}
