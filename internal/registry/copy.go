package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Result describes a finished copy.
type Result struct {
	Source      string             `json:"source"`
	Destination string             `json:"destination"`
	Descriptor  ocispec.Descriptor `json:"descriptor"`
	Manifests   int                `json:"manifests"`
	Blobs       int                `json:"blobs"`
	Bytes       int64              `json:"bytes"`       // size of all blobs
	Transferred int64              `json:"transferred"` // bytes actually moved
	Existing    int                `json:"existing"`    // blobs the destination already had
	Mounted     int                `json:"mounted"`     // blobs mounted from another repository
}

// Copy copies the image (a manifest or an index, with everything it
// references) from src to dst, byte for byte: manifests keep their exact
// bytes, so the digest at the destination is the digest at the source.
// Blobs the destination has are skipped, the rest move Jobs at a time;
// every blob is checked against its digest and size before it is visible
// at a destination that is a store or a layout (a registry checks it
// itself). The name at the destination is set last, only when everything
// else is in place.
func (c *Client) Copy(ctx context.Context, src, dst Endpoint) (*Result, error) {
	s, err := c.source(src)
	if err != nil {
		return nil, err
	}
	d, err := c.destination(dst)
	if err != nil {
		return nil, err
	}
	res, err := c.copy(ctx, s, d)
	if cerr := d.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	res.Source, res.Destination = src.String(), dst.String()
	return res, nil
}

// node is a manifest with its exact bytes.
type node struct {
	desc ocispec.Descriptor
	b    []byte
}

// anyManifest covers image manifests and indexes, OCI and Docker.
type anyManifest struct {
	MediaType string               `json:"mediaType"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Manifests []ocispec.Descriptor `json:"manifests"`
}

func isIndex(mt string) bool { return mt == ocispec.MediaTypeImageIndex || mt == DockerManifestList }

func checkDesc(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("descriptor digest %q: %v", d.Digest, err)
	}
	if d.Digest.Algorithm() != digest.SHA256 {
		return fmt.Errorf("descriptor digest %s: only sha256 is supported", d.Digest)
	}
	if d.Size < 0 {
		return fmt.Errorf("descriptor %s: negative size", d.Digest)
	}
	return nil
}

// walk collects the manifests (children before parents) and blobs of the
// image rooted at root.
// A layer or config larger than maxBlob is refused before any transfer.
func walk(ctx context.Context, src source, root node, maxBlob int64) ([]node, []ocispec.Descriptor, error) {
	var nodes []node
	var blobs []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	var visit func(n node, depth int) error
	visit = func(n node, depth int) error {
		if depth > 4 {
			return fmt.Errorf("manifest %s: indexes nested too deep", n.desc.Digest)
		}
		var m anyManifest
		if err := json.Unmarshal(n.b, &m); err != nil {
			return fmt.Errorf("manifest %s: %w", n.desc.Digest, err)
		}
		mt := n.desc.MediaType
		if m.MediaType != "" {
			mt = m.MediaType
		}
		if isIndex(mt) || (mt == "" && m.Manifests != nil) {
			for _, child := range m.Manifests {
				if err := checkDesc(child); err != nil {
					return fmt.Errorf("index %s: %w", n.desc.Digest, err)
				}
				if seen[child.Digest] {
					continue
				}
				seen[child.Digest] = true
				b, err := src.manifest(ctx, child)
				if err != nil {
					return err
				}
				if digest.FromBytes(b) != child.Digest {
					return fmt.Errorf("manifest %s: %w", child.Digest, ErrCorrupt)
				}
				if err := visit(node{desc: ocispec.Descriptor{MediaType: child.MediaType, Digest: child.Digest, Size: int64(len(b))}, b: b}, depth+1); err != nil {
					return err
				}
			}
		} else {
			if m.Config == nil {
				return fmt.Errorf("manifest %s: no config: not an image manifest or index (media type %q)", n.desc.Digest, mt)
			}
			for _, l := range append([]ocispec.Descriptor{*m.Config}, m.Layers...) {
				if err := checkDesc(l); err != nil {
					return fmt.Errorf("manifest %s: %w", n.desc.Digest, err)
				}
				if l.Size > maxBlob {
					return fmt.Errorf("manifest %s: blob %s: descriptor size %d bytes is larger than the limit of %d bytes: %w", n.desc.Digest, l.Digest, l.Size, maxBlob, ErrTooLarge)
				}
				if !seen[l.Digest] {
					seen[l.Digest] = true
					blobs = append(blobs, ocispec.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
				}
			}
		}
		nodes = append(nodes, n)
		return nil
	}
	return nodes, blobs, visit(root, 0)
}

func (c *Client) copy(ctx context.Context, src source, dst destination) (*Result, error) {
	rdesc, rb, err := src.root(ctx)
	if err != nil {
		return nil, err
	}
	nodes, blobs, err := walk(ctx, src, node{desc: rdesc, b: rb}, c.opts.MaxBlobSize)
	if err != nil {
		return nil, err
	}
	res := &Result{Descriptor: rdesc, Manifests: len(nodes), Blobs: len(blobs)}
	for _, b := range blobs {
		res.Bytes += b.Size
	}
	c.emit(Event{Kind: EventPlan, Count: len(blobs), Size: res.Bytes, Digest: rdesc.Digest})
	if err := c.copyBlobs(ctx, src, dst, blobs, res); err != nil {
		return nil, err
	}
	for _, n := range nodes[:len(nodes)-1] {
		if err := dst.putManifest(ctx, n.desc, n.b); err != nil {
			return nil, err
		}
		c.emit(Event{Kind: EventManifest, Digest: n.desc.Digest, MediaType: n.desc.MediaType, Size: n.desc.Size})
	}
	if err := dst.tag(ctx, rdesc, rb); err != nil {
		return nil, err
	}
	c.emit(Event{Kind: EventTagged, Digest: rdesc.Digest, MediaType: rdesc.MediaType, Size: rdesc.Size})
	return res, nil
}

// copyBlobs moves the blobs the destination lacks, Jobs at a time; the
// first failure cancels the rest.
func (c *Client) copyBlobs(ctx context.Context, src source, dst destination, blobs []ocispec.Descriptor, res *Result) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	work := make(chan ocispec.Descriptor)
	for i := 0; i < min(c.opts.Jobs, len(blobs)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				moved, existed, mounted, err := c.copyBlob(ctx, src, dst, b)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				res.Transferred += moved
				if existed {
					res.Existing++
				}
				if mounted {
					res.Mounted++
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, b := range blobs {
		select {
		case work <- b:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

func (c *Client) copyBlob(ctx context.Context, src source, dst destination, b ocispec.Descriptor) (moved int64, existed, mounted bool, err error) {
	ok, err := dst.has(ctx, b)
	if err != nil {
		return 0, false, false, err
	}
	if ok {
		c.emit(Event{Kind: EventExists, Digest: b.Digest, MediaType: b.MediaType, Size: b.Size})
		return 0, true, false, nil
	}
	c.emit(Event{Kind: EventStart, Digest: b.Digest, MediaType: b.MediaType, Size: b.Size})
	var last time.Time
	var resumed int64
	var done int64
	mounted, err = dst.putBlob(ctx, b, src, func(n, resumedAt int64) {
		done, resumed = n, resumedAt
		if now := time.Now(); now.Sub(last) >= 100*time.Millisecond {
			last = now
			c.emit(Event{Kind: EventProgress, Digest: b.Digest, Size: b.Size, Done: n, Offset: resumedAt})
		}
	})
	if err != nil {
		return 0, false, false, err
	}
	kind := EventBlobDone
	if mounted {
		kind = EventMounted
	}
	c.emit(Event{Kind: kind, Digest: b.Digest, MediaType: b.MediaType, Size: b.Size, Done: b.Size, Offset: resumed})
	if mounted {
		return 0, false, true, nil
	}
	return done - resumed, false, false, nil
}
