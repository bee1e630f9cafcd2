package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func putManifest(t *testing.T, s *Store, layers ...[]byte) ocispec.Descriptor {
	t.Helper()
	cfg, err := s.PutBlob(strings.NewReader(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig})
	if err != nil {
		t.Fatal(err)
	}
	var ls []string
	for _, l := range layers {
		d, err := s.PutBlob(bytes.NewReader(l), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, d.MediaType, d.Digest, d.Size))
	}
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[%s]}`,
		ocispec.MediaTypeImageManifest, cfg.MediaType, cfg.Digest, cfg.Size, strings.Join(ls, ","))
	d, err := s.PutBlob(strings.NewReader(m), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPutAndReadBlob(t *testing.T) {
	s := open(t)
	d, err := s.PutBlob(strings.NewReader("hello"), ocispec.Descriptor{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Digest != digest.FromString("hello") || d.Size != 5 {
		t.Fatalf("descriptor %+v", d)
	}
	b, err := s.ReadBlob(d)
	if err != nil || string(b) != "hello" {
		t.Fatalf("read %q, %v", b, err)
	}
	// nothing left behind in tmp
	if ents, _ := os.ReadDir(s.tmpDir()); len(ents) != 0 {
		t.Fatalf("temp files left: %v", ents)
	}
}

func TestPutBlobRejectsWrongContent(t *testing.T) {
	s := open(t)
	want := ocispec.Descriptor{Digest: digest.FromString("expected"), Size: 8}
	_, err := s.PutBlob(strings.NewReader("tampered"), want)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), string(want.Digest)) {
		t.Fatalf("err = %v", err)
	}
	if s.HasBlob(want.Digest) || s.HasBlob(digest.FromString("tampered")) {
		t.Fatal("rejected content entered the store")
	}
	_, err = s.PutBlob(strings.NewReader("expected"), ocispec.Descriptor{Digest: want.Digest, Size: 9})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "expected 9") {
		t.Fatalf("size mismatch: err = %v", err)
	}
}

func TestReadDetectsTamperAndTruncation(t *testing.T) {
	s := open(t)
	d, _ := s.PutBlob(strings.NewReader("0123456789"), ocispec.Descriptor{})
	p, _ := s.BlobPath(d.Digest)
	if err := os.WriteFile(p, []byte("0123456780"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadBlob(d); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "modified on disk") {
		t.Fatalf("flipped byte: err = %v", err)
	}
	os.WriteFile(p, []byte("01234"), 0o644)
	if err := s.VerifyBlob(d); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated: err = %v", err)
	}
	os.Remove(p)
	if err := s.VerifyBlob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: err = %v", err)
	}
}

func TestTagResolveUntag(t *testing.T) {
	s := open(t)
	m := putManifest(t, s, []byte("layer"))
	if err := s.Tag("demo:1", m); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag("demo", m); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"demo:1", "demo:latest", "demo", "demo@" + string(m.Digest), string(m.Digest)} {
		d, err := s.Resolve(ref)
		if err != nil || d.Digest != m.Digest {
			t.Fatalf("resolve %s: %v %v", ref, d.Digest, err)
		}
	}
	if _, err := s.Resolve("demo:2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("resolve missing tag: %v", err)
	}
	list, _ := s.List()
	if len(list) != 2 || list[0].Name != "demo" || list[0].Tag != "1" {
		t.Fatalf("list %+v", list)
	}
	if _, err := s.Untag("demo:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Untag("demo:1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("double untag: %v", err)
	}
	if _, err := s.Resolve("demo:1"); !errors.Is(err, ErrNotFound) {
		t.Fatal("untagged ref still resolves")
	}
}

func TestParseRef(t *testing.T) {
	for in, want := range map[string]string{"a": "a latest", "a:1": "a 1", "localhost:5000/a": "localhost:5000/a latest", "h:5/a:b": "h:5/a b"} {
		n, tg, err := ParseRef(in)
		if err != nil || n+" "+tg != want {
			t.Errorf("ParseRef(%q) = %q %q %v, want %q", in, n, tg, err, want)
		}
	}
	// issue 22: these were tags once
	for _, bad := range []string{"", ":x", "a:", "a b", "a@sha256:00", "UPPER:1", "../../etc:1", "/etc:1", "docker-archive:/tmp/x.tar", "oci:lay:1",
		"a@sha256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("a", 64)} {
		if _, _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) accepted", bad)
		}
	}
}

// Many writers tagging at once (each with its own Store, hence its own lock
// file descriptor, as separate processes would) lose no tag.
func TestConcurrentTagging(t *testing.T) {
	root := t.TempDir()
	s0, _ := Open(root)
	m := putManifest(t, s0, []byte("x"))
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := Open(root)
			if err == nil {
				err = s.Tag(fmt.Sprintf("img:%d", i), m)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	list, err := s0.List()
	if err != nil || len(list) != 40 {
		t.Fatalf("%d tags after 40 concurrent writes (%v)", len(list), err)
	}
}

func TestMalformedIndexIsRefusedAndUntouched(t *testing.T) {
	s := open(t)
	m := putManifest(t, s)
	for _, bad := range []string{"{", `{"schemaVersion":2,"manifests":[{"digest":"sha256:zz"}]}`, `{"schemaVersion":1}`, `{"schemaVersion":2} {}`} {
		os.WriteFile(s.indexPath(), []byte(bad), 0o644)
		err := s.Tag("x:1", m)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "index.json") {
			t.Fatalf("index %q: err = %v", bad, err)
		}
		if _, err := s.GC(); err == nil || !strings.Contains(err.Error(), "nothing was deleted") {
			t.Fatalf("gc on bad index: %v", err)
		}
		if b, _ := os.ReadFile(s.indexPath()); string(b) != bad {
			t.Fatal("bad index was rewritten")
		}
		if !s.HasBlob(m.Digest) {
			t.Fatal("gc deleted a blob despite a bad index")
		}
	}
}

func TestGCKeepsReferencedBlobs(t *testing.T) {
	s := open(t)
	keep := putManifest(t, s, []byte("shared"), []byte("kept"))
	drop := putManifest(t, s, []byte("shared"), []byte("dropped"))
	orphan, _ := s.PutBlob(strings.NewReader("orphan"), ocispec.Descriptor{})
	s.Tag("keep:1", keep)
	s.Tag("drop:1", drop)
	// a referrer (signature) of the kept image survives too
	sig := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/x-sig","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[],"subject":{"mediaType":%q,"digest":%q,"size":%d}}`,
		ocispec.MediaTypeImageManifest, digest.FromString("{}"), keep.MediaType, keep.Digest, keep.Size)
	s.PutBlob(strings.NewReader("{}"), ocispec.Descriptor{})
	sigDesc, _ := s.PutBlob(strings.NewReader(sig), ocispec.Descriptor{})

	if _, err := s.Untag("drop:1"); err != nil {
		t.Fatal(err)
	}
	res, err := s.GC()
	if err != nil {
		t.Fatal(err)
	}
	gone := map[digest.Digest]bool{}
	for _, d := range res.Removed {
		gone[d] = true
	}
	for _, d := range []digest.Digest{drop.Digest, digest.FromString("dropped"), orphan.Digest} {
		if !gone[d] || s.HasBlob(d) {
			t.Errorf("%s was not collected", d)
		}
	}
	for _, d := range []digest.Digest{keep.Digest, digest.FromString("shared"), digest.FromString("kept"), sigDesc.Digest, digest.FromString("{}")} {
		if gone[d] || !s.HasBlob(d) {
			t.Errorf("%s was collected but is referenced", d)
		}
	}
}

func TestGCWaitsForWriters(t *testing.T) {
	s := open(t)
	done, err := s.Writer()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := s.PutBlob(strings.NewReader("in flight"), ocispec.Descriptor{})
	gcDone := make(chan struct{})
	go func() { s.GC(); close(gcDone) }()
	time.Sleep(200 * time.Millisecond) // give gc the chance to (wrongly) run
	select {
	case <-gcDone:
		t.Fatal("gc ran while a writer was active")
	default:
	}
	if !s.HasBlob(d.Digest) {
		t.Fatal("in-flight blob collected")
	}
	done()
	<-gcDone
	if s.HasBlob(d.Digest) {
		t.Fatal("untagged blob survived gc after the writer finished")
	}
}

func TestOpenBlobReaderIsStreaming(t *testing.T) {
	s := open(t)
	big := bytes.Repeat([]byte("abc"), 1<<20)
	d, _ := s.PutBlob(bytes.NewReader(big), ocispec.Descriptor{})
	rc, err := s.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err != nil || n != int64(len(big)) {
		t.Fatal(n, err)
	}
	if fi, _ := os.Stat(filepath.Join(s.layout(), "oci-layout")); fi == nil {
		t.Fatal("no oci-layout file")
	}
}

// A tag that older versions wrote with a name today's rules refuse can still
// be listed and removed; it cannot be created.
func TestLegacyBadNameCanBeRemoved(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := putManifest(t, s, []byte("x"))
	if err := s.Tag("Bad/../Name:1", m); err == nil {
		t.Fatal("tagged a name with upper case and ..")
	}
	idx, err := s.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	d := m
	d.Annotations = map[string]string{RefNameAnnotation: "Bad/../Name:1"}
	idx.Manifests = append(idx.Manifests, d)
	if err := s.writeIndex(idx); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Name != "Bad/../Name:1" {
		t.Fatalf("list %+v %v", list, err)
	}
	if _, err := s.Untag("Bad/../Name:2"); err == nil || !strings.Contains(err.Error(), "upper case") {
		t.Errorf("untag of an absent bad name: %v, want the name rule", err)
	}
	if _, err := s.Untag("Bad/../Name:1"); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("still listed: %+v", list)
	}
}
