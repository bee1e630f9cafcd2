package build

import (
	"context"
	"fmt"
	"github.com/vesselos/vessel/internal/binfmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/mount"
	"github.com/vesselos/vessel/internal/ociruntime"
	"github.com/vesselos/vessel/internal/recipe"
)

// LabelsDir is where a generate_labels script writes labels, as in stacker.
const LabelsDir = "/oci-labels"

// maxLabel bounds one generated label's value.
const maxLabel = 64 << 10

// generateLabels runs img's generate_labels script on the finished image
// (layers and cfg, committed untagged so it can be mounted verified), with
// LabelsDir writable and /stacker holding the script; whatever the script
// changes elsewhere is thrown away. Each regular file it leaves in
// LabelsDir is a label: the file name is the key, the content the value
// (one trailing newline dropped, so `echo v > /oci-labels/k` gives "v").
func (b *builder) generateLabels(ctx context.Context, i int, img *recipe.Image, baseEnv []string, layers []ocispec.Descriptor, cfg ocispec.ImageConfig, history []ocispec.History, when time.Time) (map[string]string, error) {
	fail := func(err error) *StepError {
		return b.stepError(i, img, "generate_labels", img.KeyLine("generate_labels"), err)
	}
	if err := binfmt.Check(imagePlatform(img).Architecture); err != nil {
		return nil, fail(err) // a foreign-architecture script runs through qemu-user
	}
	l, err := b.launcher()
	if err != nil {
		return nil, fail(err)
	}
	tmpImg, err := image.Commit(b.s, image.CommitOptions{Layers: layers, Config: cfg,
		Platform: imagePlatform(img), Created: when, History: history})
	if err != nil {
		return nil, fail(err)
	}
	mi, err := mount.LocalImage(b.s, tmpImg.Descriptor.Digest.String())
	if err != nil {
		return nil, fail(err)
	}
	tmp, err := b.tempDir("labels-*")
	if err != nil {
		return nil, fail(err)
	}
	defer os.RemoveAll(tmp)
	scriptDir, labels := filepath.Join(tmp, "stacker"), filepath.Join(tmp, "labels")
	for _, d := range []string{scriptDir, labels} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fail(err)
		}
	}
	const name = ".vessel-labels.sh"
	if err := os.WriteFile(filepath.Join(scriptDir, name), []byte(img.LabelsScript()), 0o755); err != nil {
		return nil, fail(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fail(err)
	}
	tail := &tailWriter{max: tailLines}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(io.MultiWriter(b.opt.Output, tail), pr) // output errors must not stop the build
		pr.Close()
	}()
	b.event(i, StatusMessage, "", "generate_labels")
	code, err := l.Run(ctx, container.Spec{
		ID:    containerID(img.Name + "-labels"),
		Image: mi,
		Config: ociruntime.Config{
			Args:    []string{"/stacker/" + name},
			Env:     b.runEnv(img, baseEnv),
			Cwd:     "/",
			User:    "0:0",
			Network: ociruntime.NetworkNone,
			Mounts: []ociruntime.Bind{
				{Source: scriptDir, Target: "/stacker", ReadOnly: true},
				{Source: labels, Target: LabelsDir},
			},
		},
		Upper: filepath.Join(tmp, "upper"),
	}, ociruntime.Stdio{Stdout: pw, Stderr: pw})
	pw.Close()
	<-copied
	if err != nil || code != 0 {
		e := fail(err)
		e.ExitCode, e.Tail = code, tail.lines()
		if err == nil {
			e.Err = nil
		}
		return nil, e
	}
	ents, err := os.ReadDir(labels)
	if err != nil {
		return nil, fail(err)
	}
	out := map[string]string{}
	for _, ent := range ents {
		if !ent.Type().IsRegular() {
			return nil, fail(fmt.Errorf("%s/%s is not a regular file: a label is a file whose name is the key and content the value", LabelsDir, ent.Name()))
		}
		fi, err := ent.Info()
		if err != nil {
			return nil, fail(err)
		}
		if fi.Size() > maxLabel {
			return nil, fail(fmt.Errorf("%s/%s has %d bytes, more than the %d a label may have", LabelsDir, ent.Name(), fi.Size(), maxLabel))
		}
		v, err := os.ReadFile(filepath.Join(labels, ent.Name()))
		if err != nil {
			return nil, fail(err)
		}
		out[ent.Name()] = strings.TrimSuffix(string(v), "\n")
	}
	return out, nil
}
