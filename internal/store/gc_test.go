package store

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func putJSON(t *testing.T, s *Store, mt string, v any) ocispec.Descriptor {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return putString(t, s, mt, string(b))
}

func putString(t *testing.T, s *Store, mt, content string) ocispec.Descriptor {
	t.Helper()
	d, err := s.PutBlob(strings.NewReader(content), ocispec.Descriptor{MediaType: mt})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dockerImage stores a Docker v2 schema 2 image (config, one layer,
// manifest) and returns the manifest and every blob it needs.
func dockerImage(t *testing.T, s *Store, name string) (ocispec.Descriptor, []digest.Digest) {
	cfg := putString(t, s, "application/vnd.docker.container.image.v1+json", `{"architecture":"amd64","os":"linux","id":"`+name+`"}`)
	l := putString(t, s, "application/vnd.docker.image.rootfs.diff.tar.gzip", "layer "+name)
	m := putJSON(t, s, DockerManifest, map[string]any{"schemaVersion": 2, "mediaType": DockerManifest, "config": cfg, "layers": []ocispec.Descriptor{l}})
	return m, []digest.Digest{m.Digest, cfg.Digest, l.Digest}
}

// gc follows every manifest type a pull can store: Docker v2 schema 2
// manifests and manifest lists keep their configs and layers, also nested
// under an OCI index, and also when index.json's descriptor carries a
// media type that disagrees with the content.
func TestGCFollowsDockerMediaTypes(t *testing.T) {
	s := open(t)
	var want []digest.Digest
	single, blobs := dockerImage(t, s, "single")
	want = append(want, blobs...)
	amd, blobs := dockerImage(t, s, "amd64")
	want = append(want, blobs...)
	arm, blobs := dockerImage(t, s, "arm64")
	want = append(want, blobs...)
	list := putJSON(t, s, DockerManifestList, map[string]any{"schemaVersion": 2, "mediaType": DockerManifestList, "manifests": []ocispec.Descriptor{amd, arm}})
	nested, blobs := dockerImage(t, s, "nested")
	want = append(want, blobs...)
	inner := putJSON(t, s, DockerManifestList, map[string]any{"schemaVersion": 2, "mediaType": DockerManifestList, "manifests": []ocispec.Descriptor{nested}})
	outer := putJSON(t, s, ocispec.MediaTypeImageIndex, map[string]any{"schemaVersion": 2, "mediaType": ocispec.MediaTypeImageIndex, "manifests": []ocispec.Descriptor{inner}})
	mislabelled, blobs := dockerImage(t, s, "mislabelled")
	want = append(want, blobs...)
	mislabelled.MediaType = "application/octet-stream"
	want = append(want, list.Digest, inner.Digest, outer.Digest)
	for ref, d := range map[string]ocispec.Descriptor{"single:1": single, "list:1": list, "outer:1": outer, "odd:1": mislabelled} {
		if err := s.Tag(ref, d); err != nil {
			t.Fatal(err)
		}
	}
	orphan := putString(t, s, "x", "orphan")

	res, err := s.GC()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || res.Removed[0] != orphan.Digest {
		t.Errorf("gc removed %v, want only the orphan %s", res.Removed, orphan.Digest)
	}
	for _, d := range want {
		if !s.HasBlob(d) {
			t.Errorf("%s was collected but is referenced", d)
		}
	}
}

// gc refuses to delete anything when a manifest it must follow cannot be
// parsed, and the error names that manifest.
func TestGCRefusesUnparsableManifests(t *testing.T) {
	for name, content := range map[string]string{
		"not json":          "this is not a manifest",
		"trailing data":     `{"schemaVersion":2,"mediaType":"` + DockerManifest + `","config":{"mediaType":"x","digest":"` + string(digest.FromString("c")) + `","size":1},"layers":[]} {}`,
		"unknown type":      `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws","fsLayers":[]}`,
		"bad layer digest":  `{"schemaVersion":2,"mediaType":"` + DockerManifest + `","config":{"mediaType":"x","digest":"` + string(digest.FromString("c")) + `","size":1},"layers":[{"mediaType":"x","digest":"sha256:nothex","size":1}]}`,
		"no config":         `{"schemaVersion":2,"mediaType":"` + DockerManifest + `","layers":[]}`,
		"bad list":          `{"schemaVersion":2,"mediaType":"` + DockerManifestList + `","manifests":"nope"}`,
		"wrong schema":      `{"schemaVersion":1,"mediaType":"` + DockerManifestList + `","manifests":[]}`,
		"index with layers": `{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageIndex + `","manifests":[],"layers":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			keepImg, blobs := dockerImage(t, s, "kept")
			if err := s.Tag("kept:1", keepImg); err != nil {
				t.Fatal(err)
			}
			bad := putString(t, s, DockerManifest, content)
			if err := s.Tag("bad:1", bad); err != nil {
				t.Fatal(err)
			}
			orphan := putString(t, s, "x", "orphan")
			_, err := s.GC()
			if err == nil || !strings.Contains(err.Error(), bad.Digest.String()) || !strings.Contains(err.Error(), "nothing was deleted") {
				t.Fatalf("gc with an unparsable manifest: %v; want an error naming %s", err, bad.Digest)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v is not ErrCorrupt", err)
			}
			for _, d := range append(blobs, orphan.Digest, bad.Digest) {
				if !s.HasBlob(d) {
					t.Errorf("%s was deleted by a gc that failed", d)
				}
			}
		})
	}
}

// index.json and oci-layout are size-limited while read: a sparse 1 TiB
// index.json is refused at once, naming the file.
func TestHugeIndexIsRefused(t *testing.T) {
	s := open(t)
	if err := os.Truncate(s.indexPath(), 1<<40); err != nil {
		t.Skipf("no sparse 1 TiB file here: %v", err)
	}
	_, err := s.List()
	if err == nil || !strings.Contains(err.Error(), "index.json is larger than") {
		t.Fatalf("List with a 1 TiB index.json: %v", err)
	}
	if _, err := OpenLayout(s.LayoutDir()); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("OpenLayout with a 1 TiB index.json: %v", err)
	}
}
