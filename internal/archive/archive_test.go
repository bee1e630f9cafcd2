package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/reference"
	"github.com/vesselos/vessel/internal/store"
)

type entry struct {
	name, link string
	typ        byte
	body       []byte
}

func writeTar(t *testing.T, p string, entries []entry) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: typ, Mode: 0o644, Size: int64(len(e.body))}
		if typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write(e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// layerTar is a one-file rootfs tar.
func layerTar(t *testing.T, file, content string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: file, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write([]byte(content))
	tw.Close()
	return buf.Bytes()
}

// dockerSave writes an archive in the format `docker save` (before docker
// 25) writes: <id>.json configs, <id>/layer.tar layers, a symlink for a
// layer shared by two images, and manifest.json.
func dockerSave(t *testing.T, p string) (l1, l2, cfgA []byte) {
	l1, l2 = layerTar(t, "etc/hello", "hello\n"), layerTar(t, "etc/world", "world\n")
	cfg := func(layers ...[]byte) []byte {
		var ids []string
		for _, l := range layers {
			ids = append(ids, digest.FromBytes(l).String())
		}
		b, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": map[string]any{"Cmd": []string{"/bin/sh"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": ids}})
		return b
	}
	cfgA, cfgB := cfg(l1, l2), cfg(l1)
	idA, idB := digest.FromBytes(cfgA).Encoded(), digest.FromBytes(cfgB).Encoded()
	man, _ := json.Marshal([]dockerManifest{
		{Config: idA + ".json", RepoTags: []string{"acme/app:1"}, Layers: []string{"aaa/layer.tar", "bbb/layer.tar"}},
		{Config: idB + ".json", RepoTags: []string{"busybox:latest", "localhost:5000/bb:2"}, Layers: []string{"ccc/layer.tar"}},
	})
	writeTar(t, p, []entry{
		{name: "aaa/", typ: tar.TypeDir}, {name: "aaa/layer.tar", body: l1},
		{name: "bbb/", typ: tar.TypeDir}, {name: "bbb/layer.tar", body: l2},
		{name: "ccc/", typ: tar.TypeDir}, {name: "ccc/layer.tar", typ: tar.TypeSymlink, link: "../aaa/layer.tar"},
		{name: idA + ".json", body: cfgA}, {name: idB + ".json", body: cfgB},
		{name: "manifest.json", body: man},
	})
	return l1, l2, cfgA
}

func mustRef(t *testing.T, s string) reference.Ref {
	t.Helper()
	r, err := reference.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// readOnly opens the unpacked layout with the store's checks and returns
// the manifest of its only (or tagged) image.
func readOnly(t *testing.T, l *Layout) (ocispec.Descriptor, ocispec.Manifest) {
	t.Helper()
	s, err := store.OpenLayout(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var d ocispec.Descriptor
	if l.Tag != "" {
		d, err = s.ResolveLayoutTag(l.Tag)
	} else {
		var all []ocispec.Descriptor
		all, err = s.ListAll()
		if err == nil && len(all) != 1 {
			t.Fatalf("%d images", len(all))
		}
		if err == nil {
			d = all[0]
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if err := s.VerifyBlob(b); err != nil {
			t.Fatal(err)
		}
	}
	return d, m
}

func TestDockerArchive(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "save.tar")
	l1, l2, cfgA := dockerSave(t, p)
	tmp := t.TempDir()

	if _, err := Open(context.Background(), mustRef(t, "docker-archive:"+p), tmp); !errors.Is(err, ErrArchive) || !strings.Contains(err.Error(), "acme/app:1, busybox:latest") {
		t.Errorf("two images, none named: %v", err)
	}
	l, err := Open(context.Background(), mustRef(t, "docker-archive:"+p+":acme/app:1"), tmp)
	if err != nil {
		t.Fatal(err)
	}
	_, m := readOnly(t, l)
	if m.Config.Digest != digest.FromBytes(cfgA) || len(m.Layers) != 2 || m.Layers[0].Digest != digest.FromBytes(l1) || m.Layers[1].Digest != digest.FromBytes(l2) ||
		m.Layers[0].MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("manifest %+v", m)
	}
	// the symlinked layer, by a name with a registry host
	l2nd, err := Open(context.Background(), mustRef(t, "docker-archive:"+p+":localhost:5000/bb:2"), tmp)
	if err != nil {
		t.Fatal(err)
	}
	if _, m := readOnly(t, l2nd); len(m.Layers) != 1 || m.Layers[0].Digest != digest.FromBytes(l1) {
		t.Errorf("symlinked layer: %+v", m)
	}
	if _, err := Open(context.Background(), mustRef(t, "docker-archive:"+p+":busybox:2"), tmp); !errors.Is(err, ErrArchive) || !strings.Contains(err.Error(), "no image tagged docker.io/library/busybox:2") {
		t.Errorf("absent tag: %v", err)
	}
	for _, x := range []*Layout{l, l2nd} {
		if err := x.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left behind in %s: %v", tmp, left)
	}
}

// skopeo (containers/image) reads the same archive to the same config and
// layer digests, and our reading of its oci-archive gives its manifest.
func TestArchivesAgreeWithSkopeo(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo is not installed (Debian package skopeo): cannot cross-check archives")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "save.tar")
	dockerSave(t, p)
	sk := filepath.Join(dir, "sk")
	if out, err := exec.Command("skopeo", "copy", "-q", "docker-archive:"+p+":acme/app:1", "oci:"+sk+":v1").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v: %s", err, out)
	}
	ss, err := store.OpenLayout(sk)
	if err != nil {
		t.Fatal(err)
	}
	skd, err := ss.ResolveLayoutTag("v1")
	if err != nil {
		t.Fatal(err)
	}
	skm, err := ss.Manifest(skd.Digest)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(context.Background(), mustRef(t, "docker-archive:"+p+":acme/app:1"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, m := readOnly(t, l)
	// skopeo gzips the layers and re-serializes the config on the way to
	// OCI, so compare what survives that: the uncompressed layer digests
	// (its diff_ids) and the config's content.
	var skCfg, ourCfg struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	skb, err := ss.ReadBlob(skm.Config)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := store.OpenLayout(l.Dir)
	ourb, err := s.ReadBlob(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(skb, &skCfg); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(ourb, &ourCfg)
	if len(m.Layers) != len(skCfg.RootFS.DiffIDs) || len(skm.Layers) != len(m.Layers) {
		t.Fatalf("ours %+v, skopeo %+v", m, skm)
	}
	for i := range m.Layers {
		if m.Layers[i].Digest != skCfg.RootFS.DiffIDs[i] || ourCfg.RootFS.DiffIDs[i] != m.Layers[i].Digest {
			t.Errorf("layer %d: ours %s, skopeo's diff_id %s", i, m.Layers[i].Digest, skCfg.RootFS.DiffIDs[i])
		}
	}
	var a, b map[string]any
	json.Unmarshal(skb, &a)
	json.Unmarshal(ourb, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("config: ours %s, skopeo %s", ourb, skb)
	}

	// skopeo writes an oci-archive; we read its manifest byte-exact
	oa := filepath.Join(dir, "oci.tar")
	if out, err := exec.Command("skopeo", "copy", "-q", "oci:"+sk+":v1", "oci-archive:"+oa+":v1").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v: %s", err, out)
	}
	lo, err := Open(context.Background(), mustRef(t, "oci-archive:"+oa+":v1"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	if d, _ := readOnly(t, lo); d.Digest != skd.Digest {
		t.Errorf("oci-archive manifest %s, skopeo's %s", d.Digest, skd.Digest)
	}
}

func TestHostileArchives(t *testing.T) {
	layout := []entry{{name: "oci-layout", body: []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {name: "index.json", body: []byte(`{"schemaVersion":2,"manifests":[]}`)}}
	for _, tc := range []struct {
		name, ref string
		entries   []entry
		says      string
	}{
		{"climbs", "oci-archive", append(layout, entry{name: "../evil", body: []byte("x")}), `"../evil" has a '..' component`},
		{"absolute", "oci-archive", append(layout, entry{name: "/etc/evil", body: []byte("x")}), "absolute path"},
		{"symlink", "oci-archive", append(layout, entry{name: "blobs/sha256/" + strings.Repeat("a", 64), typ: tar.TypeSymlink, link: "/etc/shadow"}), "not a regular file"},
		{"device", "oci-archive", append(layout, entry{name: "dev", typ: tar.TypeChar}), "not a regular file"},
		{"duplicate", "oci-archive", append(layout, layout[1]), "appears twice"},
		{"no layout", "oci-archive", layout[1:], "not an OCI layout archive"},
		{"not docker", "docker-archive", layout, "no manifest.json"},
		{"bad manifest", "docker-archive", []entry{{name: "manifest.json", body: []byte("{")}}, "manifest.json"},
		{"missing file", "docker-archive", []entry{{name: "manifest.json", body: []byte(`[{"Config":"c.json","Layers":["l.tar"]}]`)}}, `names "c.json"`},
		{"symlink out", "docker-archive", []entry{{name: "l.tar", typ: tar.TypeSymlink, link: "../../etc/shadow"}, {name: "manifest.json", body: []byte(`[{"Config":"c.json","Layers":["l.tar"]}]`)}}, "points outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "x.tar")
			writeTar(t, p, tc.entries)
			tmp := t.TempDir()
			l, err := Open(context.Background(), mustRef(t, tc.ref+":"+p), tmp)
			if !errors.Is(err, ErrArchive) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("err = %v, want ErrArchive saying %q", err, tc.says)
			}
			if l != nil {
				l.Close()
			}
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Errorf("a failed open left %v", left)
			}
			if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
				t.Error("an entry was written outside the layout")
			}
		})
	}
}

func TestOpenCanceled(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "save.tar")
	dockerSave(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tmp := t.TempDir()
	if _, err := Open(ctx, mustRef(t, "docker-archive:"+p+":acme/app:1"), tmp); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("a canceled open left %v", left)
	}
}
