package build

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image"
)

// TestConfigHistory: configs carry stacker's author (the annotation, else
// "vessel" for a reproducible build, else USER@HOST) and one history entry
// per build step ("vessel build of NAME (imports, run)" for the layer,
// "vessel build" for the config), as skopeo reads them from the store's
// OCI layout, and umoci pairs the entries with the layers.
func TestConfigHistory(t *testing.T) {
	e := newEnv(t)
	rec := baseRecipe + `
app:
  from: {type: built, tag: base}
  imports:
    - path: note
      dest: /etc/note
  run: echo app > /etc/app
signed:
  from: {type: built, tag: base}
  annotations:
    org.opencontainers.image.authors: Jane Doe <jane@example.com>
`
	e.write(map[string]string{"note": "n\n"})
	e.mustBuild(rec)
	app := skopeoConfig(t, e, "app")
	if app.Author != "vessel" {
		t.Errorf("author of a reproducible build: %q, want vessel", app.Author)
	}
	var got []string
	for _, h := range app.History {
		got = append(got, h.CreatedBy+"|"+h.Author+"|"+boolStr(h.EmptyLayer))
	}
	want := []string{
		"vessel build of base (run)|vessel|false", "vessel build|vessel|true",
		"vessel build of app (imports, run)|vessel|false", "vessel build|vessel|true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("app history:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// umoci pairs each entry with its layer: the layer entries carry
	// app's two layers, in order.
	if _, err := exec.LookPath("umoci"); err == nil {
		out, err := exec.Command("umoci", "stat", "--json", "--image", filepath.Join(e.s.Root(), "oci")+":app:latest").Output()
		if err != nil {
			t.Fatalf("umoci stat: %v", err)
		}
		var st struct {
			History []struct {
				Layer     *ocispec.Descriptor `json:"layer"`
				CreatedBy string              `json:"created_by"`
				Author    string              `json:"author"`
			} `json:"history"`
		}
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("umoci stat: %v\n%s", err, out)
		}
		img, err := image.Read(e.s, "app")
		if err != nil {
			t.Fatal(err)
		}
		var withLayer []string
		for _, h := range st.History {
			if h.Layer != nil {
				withLayer = append(withLayer, h.CreatedBy+"@"+h.Layer.Digest.String())
			}
		}
		ls := img.Layers()
		if want := []string{"vessel build of base (run)@" + ls[0].Digest.String(), "vessel build of app (imports, run)@" + ls[1].Digest.String()}; strings.Join(withLayer, " ") != strings.Join(want, " ") {
			t.Errorf("umoci's layer history %v, want %v", withLayer, want)
		}
	}
	signed := skopeoConfig(t, e, "signed")
	if signed.Author != "Jane Doe <jane@example.com>" {
		t.Errorf("author from the annotation: %q", signed.Author)
	}
	if h := signed.History; len(h) != 3 || h[2].Author != signed.Author || !h[2].EmptyLayer {
		t.Errorf("signed history (no layer of its own): %+v", h)
	}
	// Without SOURCE_DATE_EPOCH: stacker's USER@HOST.
	opt := e.options()
	opt.SourceDateEpoch = nil
	t.Setenv("SUDO_USER", "builder")
	if _, err := e.build(rec, opt, nil); err != nil {
		t.Fatal(err, e.out.String())
	}
	if a := skopeoConfig(t, e, "app").Author; !strings.HasPrefix(a, "builder@") || len(a) == len("builder@") {
		t.Errorf("author without SOURCE_DATE_EPOCH: %q, want builder@HOST", a)
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// skopeoConfig reads an image's config with skopeo, an independent reader
// of the store's OCI layout.
func skopeoConfig(t *testing.T, e *env, name string) ocispec.Image {
	t.Helper()
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo is not installed (make deps)")
	}
	out, err := exec.Command("skopeo", "inspect", "--config", "oci:"+filepath.Join(e.s.Root(), "oci")+":"+name+":latest").Output()
	if err != nil {
		t.Fatalf("skopeo inspect --config %s: %v", name, err)
	}
	var img ocispec.Image
	if err := json.Unmarshal(out, &img); err != nil {
		t.Fatalf("skopeo's config of %s: %v\n%s", name, err, out)
	}
	return img
}
