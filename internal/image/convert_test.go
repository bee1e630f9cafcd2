package image

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// countingReader counts its reads in a plain field: a read from a second
// goroutine without a happens-before edge is a data race that -race reports.
type countingReader struct {
	r     *bytes.Reader
	reads int
	bytes int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	n, err := c.r.Read(p)
	c.bytes += n
	return n, err
}

// A zstd layer whose stream goes on after the tar's end-of-archive marker:
// the tar reader stops early and the blob is drained for its digest. Only
// the caller's goroutine may read the (verifying) blob reader, or the
// drain and the decoder read it at once (-race fails this test on the
// asynchronous decoder), and every byte must reach it exactly once.
func TestUnpackBlobReadsTheBlobFromOneGoroutine(t *testing.T) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	body := []byte("hello")
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(body)), Uid: os.Getuid(), Gid: os.Getgid(), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	tw.Close()
	trailer := make([]byte, 8<<20) // incompressible: many blocks for a read-ahead decoder
	rand.Read(trailer)
	var zb bytes.Buffer
	z, err := zstd.NewWriter(&zb)
	if err != nil {
		t.Fatal(err)
	}
	z.Write(tb.Bytes())
	z.Write(trailer)
	z.Close()
	blob := zb.Bytes()

	for i := 0; i < 3; i++ {
		cr := &countingReader{r: bytes.NewReader(blob)}
		root := t.TempDir()
		if err := unpackBlob(ocispec.MediaTypeImageLayerZstd, cr, root); err != nil {
			t.Fatal(err)
		}
		if cr.bytes != len(blob) {
			t.Fatalf("the blob reader saw %d bytes, the blob has %d", cr.bytes, len(blob))
		}
		if b, err := os.ReadFile(filepath.Join(root, "f")); err != nil || string(b) != "hello" {
			t.Fatalf("unpacked f = %q, %v", b, err)
		}
	}
}
