package layer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/verity"
)

// BuildOptions control how a directory becomes a layer.
type BuildOptions struct {
	Format Format
	// SourceDateEpoch, when set, clamps every file time and the
	// filesystem's own time to this Unix time (reproducible builds).
	SourceDateEpoch *int64
	// Stderr receives the filesystem tool's diagnostics (nil: discarded,
	// but kept for the error message).
	Stderr io.Writer
	// Written, if set, is called about every ProgressInterval while the
	// filesystem tool runs with the bytes it has written so far, and once
	// more when it is done (long layers are not silent).
	Written func(n int64)
	// Hashed, if set, is called about every ProgressInterval while the
	// finished filesystem image is hashed (its digest, then its dm-verity
	// tree) with the bytes read so far of total (twice the image), and
	// once more at the end.
	Hashed func(done, total int64)
}

// ProgressInterval paces BuildOptions.Written.
var ProgressInterval = 250 * time.Millisecond

// Built is a finished layer blob in a temp file, ready to be committed to a
// store by rename (store.PutBlobFile).
type Built struct {
	Path       string             // the blob file
	Descriptor ocispec.Descriptor // media type, digest, size, verity annotation
	DataSize   int64              // bytes of filesystem image (padded), where the tree starts
	RootHash   string
}

// Build makes a layer blob from dir at path (which must not exist; it is
// removed again on error).
func Build(ctx context.Context, dir, path string, opt BuildOptions) (_ *Built, err error) {
	if opt.Format.Type == "" {
		opt.Format = DefaultFormat(Squashfs)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("layer from %s: not a directory", dir)
	}
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	cmd, err := mkfsCommand(ctx, dir, path, opt)
	if err != nil {
		return nil, err
	}
	var tail tailBuffer
	// the tool dies with vessel: a killed create leaves no writer behind
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout = io.Discard
	cmd.Stderr = &tail
	if opt.Stderr != nil {
		cmd.Stderr = io.MultiWriter(&tail, opt.Stderr)
	}
	stop := watchSize(path, opt.Written)
	err = cmd.Run()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("layer from %s: %s failed: %v: %s", dir, cmd.Args[0], err, strings.TrimSpace(tail.String()))
	}
	return seal(path, opt.Format, opt.Hashed)
}

// mkfsCommand is the filesystem tool invocation for opt.
func mkfsCommand(ctx context.Context, dir, path string, opt BuildOptions) (*exec.Cmd, error) {
	f := opt.Format
	switch f.Type {
	case Squashfs:
		args := []string{dir, path, "-noappend", "-quiet", "-no-progress", "-xattrs"}
		switch f.Compression {
		case "zstd", "gzip", "xz", "lz4", "lzo":
			args = append(args, "-comp", f.Compression)
		default:
			return nil, fmt.Errorf("squashfs compression %q: use zstd, gzip, xz, lz4 or lzo", f.Compression)
		}
		t := "0" // the filesystem's own time: fixed, never "now"
		if opt.SourceDateEpoch != nil {
			t = strconv.FormatInt(*opt.SourceDateEpoch, 10)
			args = append(args, "-all-time", t)
		}
		args = append(args, "-mkfs-time", t)
		cmd := exec.CommandContext(ctx, "mksquashfs", args...)
		// mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times
		cmd.Env = withoutEnv(os.Environ(), "SOURCE_DATE_EPOCH")
		return cmd, nil
	case Erofs:
		args := []string{"--quiet", "-U", "00000000-0000-4000-8000-000000000000"}
		switch f.Compression {
		case "":
		case "lz4", "lz4hc":
			args = append(args, "-z"+f.Compression)
		default:
			return nil, fmt.Errorf("erofs compression %q: use lz4hc, lz4 or none", f.Compression)
		}
		if opt.SourceDateEpoch != nil {
			args = append(args, "-T", strconv.FormatInt(*opt.SourceDateEpoch, 10))
		}
		args = append(args, path, dir)
		cmd := exec.CommandContext(ctx, "mkfs.erofs", args...)
		// mkfs.erofs reads SOURCE_DATE_EPOCH itself: only our choice counts
		cmd.Env = withoutEnv(os.Environ(), "SOURCE_DATE_EPOCH")
		return cmd, nil
	}
	return nil, fmt.Errorf("layer type %q: must be squashfs or erofs", f.Type)
}

// seal pads the filesystem image at path to a block boundary, appends its
// verity tree and computes the blob's digest, reading the image once
// sequentially (digest and salt) and once in parallel (tree).
func seal(path string, f Format, hashed func(done, total int64)) (*Built, error) {
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("seal layer: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal layer: %w", err)
	}
	if st.Size() == 0 {
		return nil, errors.New("seal layer: the filesystem image is empty")
	}
	dataSize := (st.Size() + BlockSize - 1) / BlockSize * BlockSize
	if err := fh.Truncate(dataSize); err != nil { // zero padding
		return nil, fmt.Errorf("seal layer: pad: %w", err)
	}
	blobHash := sha256.New()
	rd := &readCounter{r: fh, end: dataSize, total: 2 * dataSize, report: hashed}
	defer rd.finish()
	if _, err := io.Copy(blobHash, io.NewSectionReader(rd, 0, dataSize)); err != nil {
		return nil, fmt.Errorf("seal layer: read image: %w", err)
	}
	p := verity.Params{DataBlocks: uint64(dataSize / BlockSize), HashOffset: dataSize, Salt: deriveSalt(blobHash)}
	copy(p.UUID[:], p.Salt[:16])
	p.UUID[6] = p.UUID[6]&0x0f | 0x40 // a well-formed (v4-shaped) UUID
	p.UUID[8] = p.UUID[8]&0x3f | 0x80
	root, err := verity.Format(rd, fh, p)
	if err != nil {
		return nil, fmt.Errorf("seal layer: verity: %w", err)
	}
	end := dataSize + verity.TreeSize(p)
	if _, err := io.Copy(blobHash, io.NewSectionReader(fh, dataSize, end-dataSize)); err != nil {
		return nil, fmt.Errorf("seal layer: read tree: %w", err)
	}
	if err := fh.Sync(); err != nil {
		return nil, fmt.Errorf("seal layer: fsync: %w", err)
	}
	rootHex := hex.EncodeToString(root)
	return &Built{
		Path:     path,
		DataSize: dataSize,
		RootHash: rootHex,
		Descriptor: ocispec.Descriptor{
			MediaType:   f.MediaType(),
			Digest:      digest.NewDigest(digest.SHA256, blobHash),
			Size:        end,
			Annotations: map[string]string{AnnotationVerityRoot: rootHex},
		},
	}, nil
}

// deriveSalt makes the verity salt from the hash of the filesystem image
// so far (h is not reset: it goes on to hash the whole blob).
func deriveSalt(h hash.Hash) []byte {
	s := sha256.New()
	s.Write([]byte("vessel verity salt v1\x00"))
	s.Write(h.Sum(nil))
	return s.Sum(nil)
}

func withoutEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// tailBuffer keeps the last 4 KiB written to it, for error messages.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// watchSize calls written with path's size every ProgressInterval until
// stop, and a last time at stop. It does nothing when written is nil.
func watchSize(path string, written func(int64)) (stop func()) {
	if written == nil {
		return func() {}
	}
	size := func() {
		if fi, err := os.Stat(path); err == nil {
			written(fi.Size())
		}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				size()
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		size()
	}
}

// readCounter reads r and reports the bytes read below end (the
// filesystem image, read once for the digest and once for the tree) to
// report, at most every ProgressInterval; finish reports the last count.
type readCounter struct {
	r      io.ReaderAt
	end    int64
	total  int64
	report func(done, total int64)
	mu     sync.Mutex
	done   int64
	last   time.Time
}

func (c *readCounter) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	if c.report == nil || off >= c.end {
		return n, err
	}
	c.mu.Lock()
	c.done += min(int64(n), c.end-off)
	if time.Since(c.last) >= ProgressInterval {
		c.last = time.Now()
		c.report(min(c.done, c.total), c.total)
	}
	c.mu.Unlock()
	return n, err
}

func (c *readCounter) finish() {
	if c.report != nil {
		c.report(min(c.done, c.total), c.total)
	}
}
