package mount

import (
	"fmt"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Empty is the image with no layers: the base of `vessel build` for an
// image `from: scratch`. It can only be mounted writable (Options.Writable):
// its root is an empty directory under the run directory as the overlay's
// only lower layer, so everything the container writes lands in the upper
// directory. There is nothing to verify.
func Empty(name string) *Image { return &Image{name: name, empty: true} }

// EmptyWithConfig is Empty with an image config: the base of a build on
// an image that has a config but no layers (what `umoci new` makes). The
// config is the caller's, already digest-checked where it was read.
func EmptyWithConfig(name string, cfg ocispec.Image) *Image {
	return &Image{name: name, empty: true, emptyConfig: &cfg}
}

// emptyLower is the shared empty lower directory of layerless mounts.
func emptyLower(run string) string { return filepath.Join(run, "empty") }

// makeEmptyLower creates the empty lower directory (0755) if missing and
// checks that it is still empty: anything in it would show up in every
// layerless container.
func makeEmptyLower(run string) error {
	d := emptyLower(run)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("empty lower directory: %w", err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		return fmt.Errorf("empty lower directory: %w", err)
	}
	ents, err := os.ReadDir(d)
	if err != nil {
		return fmt.Errorf("empty lower directory: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("empty lower directory %s is not empty (%s...): remove its contents", d, ents[0].Name())
	}
	return nil
}
