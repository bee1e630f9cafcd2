package verity

import (
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// unitBytes is how much data one worker reads and hashes per step: a pread
// this big costs far less than hashing it, and the buffer stays in L2.
const unitBytes = 1 << 20

// hasher computes H(salt || block) without allocating.
type hasher struct {
	h    hash.Hash
	salt []byte
	ds   int
}

func (g *geometry) newHasher() *hasher {
	return &hasher{h: g.newHash(), salt: g.p.Salt, ds: g.digestSize}
}

// sum writes the salted digest of block into out[:ds].
func (s *hasher) sum(block, out []byte) {
	s.h.Reset()
	s.h.Write(s.salt)
	s.h.Write(block)
	s.h.Sum(out[:0])
}

// sumBlocks hashes each size-byte block of src into dst at stride.
func (s *hasher) sumBlocks(src []byte, size, stride int, dst []byte) {
	for i := 0; len(src) > 0; i++ {
		s.sum(src[:size], dst[i*stride:])
		src = src[size:]
	}
}

// readFull reads len(b) bytes at off, reporting a short read as
// io.ErrUnexpectedEOF.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// worker holds one goroutine's buffers for level 0.
type worker struct {
	data   []byte // data blocks of one unit
	hash   []byte // computed level-0 hash blocks of one unit
	stored []byte // level-0 hash blocks read back (Verify)
	h      *hasher
}

// unit is a run of consecutive level-0 hash blocks and the data they cover.
type unit struct {
	firstHash, hashBlocks int64 // level-0 hash block range
	firstData, dataBlocks int64 // data block range
}

func (g *geometry) hashBlocksPerUnit() int64 {
	n := int64(unitBytes) / (int64(g.perBlock) * int64(g.p.DataBlockSize))
	return max(n, 1)
}

// level0 runs fn over every unit of level 0 on GOMAXPROCS goroutines,
// handing out units in order from a shared counter so that a busy core
// does not hold the others up. It stops at the first error.
func (g *geometry) level0(withStored bool, fn func(w *worker, u unit) error) error {
	per := g.hashBlocksPerUnit()
	units := (g.levelSize[0] + per - 1) / per
	workers := int64(runtime.GOMAXPROCS(0))
	workers = max(min(workers, units), 1)
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
		errs   = make([]error, workers)
	)
	hbs := int(g.p.HashBlockSize)
	for i := range workers {
		w := &worker{
			data: make([]byte, per*int64(g.perBlock)*int64(g.p.DataBlockSize)),
			hash: make([]byte, per*int64(hbs)),
			h:    g.newHasher(),
		}
		if withStored {
			w.stored = make([]byte, len(w.hash))
		}
		wg.Go(func() {
			for !failed.Load() {
				n := next.Add(1) - 1
				if n >= units {
					return
				}
				u := unit{firstHash: n * per, hashBlocks: min(per, g.levelSize[0]-n*per)}
				u.firstData = u.firstHash * int64(g.perBlock)
				u.dataBlocks = min(u.hashBlocks*int64(g.perBlock), int64(g.p.DataBlocks)-u.firstData)
				if err := fn(w, u); err != nil {
					errs[i] = err
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// hashUnit reads the data of u and computes its level-0 hash blocks into
// w.hash[:u.hashBlocks*hbs].
func (g *geometry) hashUnit(data io.ReaderAt, w *worker, u unit) error {
	dbs := int64(g.p.DataBlockSize)
	buf := w.data[:u.dataBlocks*dbs]
	if err := readFull(data, buf, u.firstData*dbs); err != nil {
		return fmt.Errorf("verity: read data blocks %d-%d: %w", u.firstData, u.firstData+u.dataBlocks-1, err)
	}
	out := w.hash[:u.hashBlocks*int64(g.p.HashBlockSize)]
	w.h.sumBlocks(buf, int(dbs), g.entrySize, out)
	clear(out[u.dataBlocks*int64(g.entrySize):]) // spare entries of the last block
	return nil
}

// Format computes the hash tree of p.DataBlocks blocks of data, writes the
// superblock at p.HashOffset of hash followed by the tree, and returns the
// root hash. data and hash may be the same file when the hash area lies past
// the data. The output is byte-identical to `veritysetup format` given the
// same salt and UUID.
func Format(data io.ReaderAt, hash io.WriterAt, p Params) (root []byte, err error) {
	g, err := newGeometry(p)
	if err != nil {
		return nil, err
	}
	head := make([]byte, g.treeStart-g.p.HashOffset)
	copy(head, g.p.MarshalSuperblock())
	if _, err := hash.WriteAt(head, g.p.HashOffset); err != nil {
		return nil, fmt.Errorf("verity: write superblock: %w", err)
	}
	if g.levels == 0 {
		return g.singleBlockRoot(data)
	}
	hbs := int64(g.p.HashBlockSize)
	ds := g.digestSize
	// below holds the digests of the blocks of the level just written.
	below := make([]byte, g.levelSize[0]*int64(ds))
	err = g.level0(false, func(w *worker, u unit) error {
		if err := g.hashUnit(data, w, u); err != nil {
			return err
		}
		out := w.hash[:u.hashBlocks*hbs]
		if _, err := hash.WriteAt(out, (g.levelStart[0]+u.firstHash)*hbs); err != nil {
			return fmt.Errorf("verity: write hash blocks: %w", err)
		}
		w.h.sumBlocks(out, int(hbs), ds, below[u.firstHash*int64(ds):])
		return nil
	})
	if err != nil {
		return nil, err
	}
	h := g.newHasher()
	for i := 1; i < g.levels; i++ {
		level := make([]byte, g.levelSize[i]*hbs)
		for k := range g.levelSize[i-1] {
			copy(level[k*int64(g.entrySize):], below[k*int64(ds):(k+1)*int64(ds)])
		}
		if _, err := hash.WriteAt(level, g.levelStart[i]*hbs); err != nil {
			return nil, fmt.Errorf("verity: write hash level %d: %w", i, err)
		}
		below = make([]byte, g.levelSize[i]*int64(ds))
		h.sumBlocks(level, int(hbs), ds, below)
	}
	return below[:ds], nil
}

// singleBlockRoot handles a one-block device: no tree, the root is the
// digest of the data block itself.
func (g *geometry) singleBlockRoot(data io.ReaderAt) ([]byte, error) {
	b := make([]byte, g.p.DataBlockSize)
	if err := readFull(data, b, 0); err != nil {
		return nil, fmt.Errorf("verity: read data block 0: %w", err)
	}
	root := make([]byte, g.digestSize)
	g.newHasher().sum(b, root)
	return root, nil
}

// Verify checks every data block and every hash block of the tree described
// by p against root. A corrupted block is reported as a *CorruptionError
// naming it (hash levels are checked top-down, so the block named is the one
// that differs from what its verified parent says); a tree that does not
// hash to root gives an error wrapping ErrRootMismatch; a short data or hash
// file gives an error wrapping io.ErrUnexpectedEOF.
func Verify(data io.ReaderAt, hash io.ReaderAt, p Params, root []byte) error {
	g, err := newGeometry(p)
	if err != nil {
		return err
	}
	ds := g.digestSize
	if len(root) != ds {
		return fmt.Errorf("verity: root hash is %d bytes, %s needs %d", len(root), g.p.HashAlg, ds)
	}
	if g.levels == 0 {
		got, err := g.singleBlockRoot(data)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, root) {
			return fmt.Errorf("verity: data block 0 does not hash to the root: %w", ErrRootMismatch)
		}
		return nil
	}
	hbs := int64(g.p.HashBlockSize)
	top := g.levels - 1

	// Levels 1 and up are small (1/128 of level 0 or less): read and check
	// them in memory, top-down.
	upperStart := g.levelStart[top]
	upper := make([]byte, (g.levelStart[0]-upperStart)*hbs)
	if err := readFull(hash, upper, upperStart*hbs); err != nil {
		return fmt.Errorf("verity: read hash blocks %d-%d: %w", upperStart, g.levelStart[0]-1, err)
	}
	block := func(level int, k int64) []byte { // a block of an upper level
		off := (g.levelStart[level] - upperStart + k) * hbs
		return upper[off : off+hbs]
	}
	entry := func(level int, k int64) []byte { // the entry for block k of level-1
		if level > top {
			return root
		}
		e := block(level, k/int64(g.perBlock))
		off := (k % int64(g.perBlock)) * int64(g.entrySize)
		return e[off : off+int64(ds)]
	}
	corrupt := func(level int, k int64, reason string) error {
		b := g.levelStart[level] + k
		return &CorruptionError{Area: "hash", Block: uint64(b), Offset: b * hbs, Level: level, Reason: reason}
	}
	h := g.newHasher()
	sum := make([]byte, ds)
	if top > 0 {
		if h.sum(block(top, 0), sum); !bytes.Equal(sum, root) {
			return fmt.Errorf("verity: top hash block %d (offset %d) does not hash to the root: %w",
				g.levelStart[top], g.levelStart[top]*hbs, ErrRootMismatch)
		}
	}
	for i := top; i >= 1; i-- {
		for k := range g.levelSize[i] {
			if reason := g.checkSpare(block(i, k), k, g.levelSize[i-1]); reason != "" {
				return corrupt(i, k, reason)
			}
		}
		if i-1 == 0 {
			break
		}
		for k := range g.levelSize[i-1] {
			if h.sum(block(i-1, k), sum); !bytes.Equal(sum, entry(i, k)) {
				return corrupt(i-1, k, "digest differs from its parent's entry")
			}
		}
	}

	// Level 0 and the data, in parallel. Remember the first bad level-0
	// block and the first bad data block; report hash blocks first, since a
	// bad hash block makes the data below it look bad too.
	var (
		mu               sync.Mutex
		badHash, badData int64 = -1, -1
		badHashReason    string
		dbs              = int64(g.p.DataBlockSize)
		firstLevel0      = g.levelStart[0]
	)
	note := func(bad *int64, k int64, reason string) {
		mu.Lock()
		defer mu.Unlock()
		if *bad < 0 || k < *bad {
			*bad = k
			if bad == &badHash {
				badHashReason = reason
			}
		}
	}
	err = g.level0(true, func(w *worker, u unit) error {
		if err := g.hashUnit(data, w, u); err != nil {
			return err
		}
		stored := w.stored[:u.hashBlocks*hbs]
		if err := readFull(hash, stored, (firstLevel0+u.firstHash)*hbs); err != nil {
			return fmt.Errorf("verity: read hash blocks %d-%d: %w",
				firstLevel0+u.firstHash, firstLevel0+u.firstHash+u.hashBlocks-1, err)
		}
		want := make([]byte, ds) // once per 4 MiB unit
		for j := range u.hashBlocks {
			k := u.firstHash + j
			got := stored[j*hbs : (j+1)*hbs]
			if w.h.sum(got, want); !bytes.Equal(want, entry(1, k)) {
				note(&badHash, k, "digest differs from its parent's entry")
				continue
			}
			if bytes.Equal(got, w.hash[j*hbs:(j+1)*hbs]) {
				continue
			}
			if reason := g.checkSpare(got, k, int64(g.p.DataBlocks)); reason != "" {
				note(&badHash, k, reason)
				continue
			}
			for e := range int64(g.perBlock) {
				off := e * int64(g.entrySize)
				if !bytes.Equal(got[off:off+int64(ds)], w.hash[j*hbs+off:j*hbs+off+int64(ds)]) {
					note(&badData, u.firstData+j*int64(g.perBlock)+e, "")
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if badHash >= 0 {
		return corrupt(0, badHash, badHashReason)
	}
	if badData >= 0 {
		return &CorruptionError{Area: "data", Block: uint64(badData), Offset: badData * dbs, Level: -1}
	}
	return nil
}

// checkSpare returns why block k of a level holding children entries in total
// has non-zero bytes where there is no digest (padding of each entry, and
// the unused entries of the level's last block), or "" if it has none.
func (g *geometry) checkSpare(b []byte, k, children int64) string {
	n := min(children-k*int64(g.perBlock), int64(g.perBlock))
	for e := range n {
		off := e * int64(g.entrySize)
		if !allZero(b[off+int64(g.digestSize) : off+int64(g.entrySize)]) {
			return "spare bytes after a digest are not zero"
		}
	}
	if !allZero(b[n*int64(g.entrySize):]) {
		return "spare area after the last digest is not zero"
	}
	return ""
}
