package verity

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
)

var (
	testSalt = mustHex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	testUUID = [16]byte{0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc}
)

const testUUIDString = "12345678-1234-1234-1234-123456789abc"

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// testData returns n bytes from a fixed ChaCha8 stream (stable across Go releases).
func testData(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{'v', 'e', 's', 's', 'e', 'l'}).Read(b)
	return b
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// formatFile runs Format on files (the same path for data and hash is allowed).
func formatFile(t *testing.T, dataPath, hashPath string, p Params) []byte {
	t.Helper()
	d, err := os.Open(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h, err := os.OpenFile(hashPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	root, err := Format(d, h, p)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	return root
}

func verifyFile(t *testing.T, dataPath, hashPath string, off int64, root []byte) error {
	t.Helper()
	d, err := os.Open(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h, err := os.Open(hashPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	p, err := ReadSuperblock(h, off)
	if err != nil {
		return err
	}
	return Verify(d, h, p, root)
}

var rootLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]+)$`)

// veritysetup runs the real tool, skipping the test where it is absent.
func veritysetup(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("veritysetup"); err != nil {
		t.Skip("veritysetup not on PATH (install cryptsetup-bin): no cross-check possible")
	}
	out, err := exec.Command("veritysetup", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func veritysetupRoot(t *testing.T, args ...string) []byte {
	t.Helper()
	out := veritysetup(t, args...)
	m := rootLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no root hash in veritysetup output:\n%s", out)
	}
	return mustHex(m[1])
}

// TestKnownAnswer pins root hashes (computed with veritysetup 2.6.1) so the
// format cannot drift even where veritysetup is not installed.
func TestKnownAnswer(t *testing.T) {
	for _, tc := range []struct {
		blocks int
		salt   []byte
		root   string
	}{
		{1, testSalt, "c6e059c26f853a353569943ab11e07d44c15f25c420ec16c841cbe910836c73a"},
		{129, testSalt, "1b80f33f70a34708a8a6ee564462d372fab8f2393f082786ebce4832e507e5eb"},
		{129, nil, "9f98cf5cb929eccf6245ff0e6a266f7598e3a8037b8cdd560564be99f9427405"},
	} {
		t.Run(fmt.Sprintf("%dblocks-salt%d", tc.blocks, len(tc.salt)), func(t *testing.T) {
			data := testData(tc.blocks * 4096)
			hash := &memFile{}
			root, err := Format(bytes.NewReader(data), hash, Params{DataBlocks: uint64(tc.blocks), Salt: tc.salt, UUID: testUUID})
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(root); got != tc.root {
				t.Errorf("root = %s, want %s", got, tc.root)
			}
		})
	}
}

// TestVeritysetupCompatible formats the same data with veritysetup and with
// Format at the level boundaries and compares root hashes and hash files
// byte for byte; then each tool verifies the other's tree.
func TestVeritysetupCompatible(t *testing.T) {
	for _, tc := range []struct {
		blocks int
		alg    string
		dbs    uint32
		hbs    uint32
		salt   []byte
	}{
		{1, "sha256", 4096, 4096, testSalt},
		{2, "sha256", 4096, 4096, testSalt},
		{128, "sha256", 4096, 4096, testSalt},
		{129, "sha256", 4096, 4096, testSalt},
		{128*128 + 1, "sha256", 4096, 4096, testSalt},
		{129, "sha256", 4096, 4096, nil},
		{1000, "sha256", 512, 512, testSalt[:5]},
		{1000, "sha256", 4096, 1024, testSalt},
		{300, "sha1", 4096, 4096, testSalt},
		{300, "sha512", 1024, 4096, testSalt},
	} {
		name := fmt.Sprintf("%s-%d-%d-%dblocks-salt%d", tc.alg, tc.dbs, tc.hbs, tc.blocks, len(tc.salt))
		t.Run(name, func(t *testing.T) {
			dataPath := writeFile(t, "data", testData(tc.blocks*int(tc.dbs)))
			dir := t.TempDir()
			theirs, ours := filepath.Join(dir, "theirs"), filepath.Join(dir, "ours")
			salt := "-"
			if len(tc.salt) > 0 {
				salt = hex.EncodeToString(tc.salt)
			}
			common := []string{"--hash=" + tc.alg, "--data-block-size=" + strconv.Itoa(int(tc.dbs)),
				"--hash-block-size=" + strconv.Itoa(int(tc.hbs))}
			wantRoot := veritysetupRoot(t, append([]string{"format", dataPath, theirs, "--salt=" + salt, "--uuid=" + testUUIDString}, common...)...)

			p := Params{HashAlg: tc.alg, DataBlockSize: tc.dbs, HashBlockSize: tc.hbs, DataBlocks: uint64(tc.blocks), Salt: tc.salt, UUID: testUUID}
			root := formatFile(t, dataPath, ours, p)
			if !bytes.Equal(root, wantRoot) {
				t.Fatalf("root %x, veritysetup says %x", root, wantRoot)
			}
			a, _ := os.ReadFile(theirs)
			b, _ := os.ReadFile(ours)
			if !bytes.Equal(a, b) {
				t.Fatalf("hash files differ: veritysetup %d bytes, ours %d bytes, first difference at %d", len(a), len(b), firstDiff(a, b))
			}
			if got := TreeSize(p); got != int64(len(b)) {
				t.Errorf("TreeSize = %d, file is %d bytes", got, len(b))
			}
			veritysetup(t, append([]string{"verify", dataPath, ours, hex.EncodeToString(root)}, common...)...)
			if err := verifyFile(t, dataPath, theirs, 0, wantRoot); err != nil {
				t.Fatalf("Verify of veritysetup's tree: %v", err)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSameFile covers the layer-blob layout: the image, then the tree at
// DataBlocks*4096 in the same file.
func TestSameFile(t *testing.T) {
	const blocks = 300
	data := testData(blocks * 4096)
	ours := writeFile(t, "ours", data)
	theirs := writeFile(t, "theirs", data)
	off := int64(blocks * 4096)
	root := formatFile(t, ours, ours, Params{DataBlocks: blocks, Salt: testSalt, UUID: testUUID, HashOffset: off})
	if err := verifyFile(t, ours, ours, off, root); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	args := []string{"--data-blocks=" + strconv.Itoa(blocks), "--hash-offset=" + strconv.FormatInt(off, 10)}
	veritysetup(t, append([]string{"verify", ours, ours, hex.EncodeToString(root)}, args...)...)
	wantRoot := veritysetupRoot(t, append([]string{"format", theirs, theirs, "--salt=" + hex.EncodeToString(testSalt), "--uuid=" + testUUIDString}, args...)...)
	if !bytes.Equal(root, wantRoot) {
		t.Fatalf("root %x, veritysetup says %x", root, wantRoot)
	}
	a, _ := os.ReadFile(theirs)
	b, _ := os.ReadFile(ours)
	if !bytes.Equal(a, b) {
		t.Fatalf("files differ at byte %d (sizes %d, %d)", firstDiff(a, b), len(a), len(b))
	}
	if err := verifyFile(t, theirs, theirs, off, wantRoot); err != nil {
		t.Fatalf("Verify of veritysetup's same-file tree: %v", err)
	}
}

// memFile is an in-memory io.ReaderAt and io.WriterAt for tests. Writes
// may run in parallel (Format's contract); reads only run after writes.
type memFile struct {
	mu sync.Mutex
	b  []byte
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) Size() int64 { return int64(len(m.b)) }

// tree formats blocks of test data in memory.
func tree(t testing.TB, blocks int) (data []byte, hash *memFile, p Params, root []byte) {
	t.Helper()
	data = testData(blocks * 4096)
	hash = &memFile{}
	p = Params{DataBlocks: uint64(blocks), Salt: testSalt, UUID: testUUID}
	root, err := Format(bytes.NewReader(data), hash, p)
	if err != nil {
		t.Fatal(err)
	}
	p, err = ReadSuperblock(hash, 0)
	if err != nil {
		t.Fatal(err)
	}
	return data, hash, p, root
}

func TestCorruption(t *testing.T) {
	const blocks = 128*128 + 1 // three levels: 129 + 2 + 1 hash blocks
	data, hash, p, root := tree(t, blocks)
	if err := Verify(bytes.NewReader(data), hash, p, root); err != nil {
		t.Fatalf("Verify of a good tree: %v", err)
	}
	// Hash file blocks: 0 superblock, 1 top (level 2), 2-3 level 1, 4-132 level 0.
	for _, tc := range []struct {
		name       string
		area       string
		byteOffset int64 // in the data or hash file
		wantBlock  uint64
		wantLevel  int
	}{
		{"first data block", "data", 0, 0, -1},
		{"data block 1234", "data", 1234*4096 + 77, 1234, -1},
		{"last data block", "data", blocks*4096 - 1, blocks - 1, -1},
		{"level 0 digest", "hash", 4*4096 + 5, 4, 0},
		{"last level 0 block spare area", "hash", 132*4096 + 4000, 132, 0},
		{"level 1 block", "hash", 3*4096 + 32, 3, 1},
		{"level 1 spare area", "hash", 3*4096 + 4095, 3, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, h := bytes.Clone(data), &memFile{b: bytes.Clone(hash.b)}
			if tc.area == "data" {
				d[tc.byteOffset] ^= 0x10
			} else {
				h.b[tc.byteOffset] ^= 0x10
			}
			err := Verify(bytes.NewReader(d), h, p, root)
			var ce *CorruptionError
			if !errors.As(err, &ce) {
				t.Fatalf("Verify = %v, want a *CorruptionError", err)
			}
			if ce.Area != tc.area || ce.Block != tc.wantBlock || ce.Level != tc.wantLevel {
				t.Fatalf("got %s block %d level %d (%v), want %s block %d level %d",
					ce.Area, ce.Block, ce.Level, err, tc.area, tc.wantBlock, tc.wantLevel)
			}
			wantOff := int64(tc.wantBlock) * 4096
			if ce.Offset != wantOff {
				t.Errorf("offset %d, want %d", ce.Offset, wantOff)
			}
		})
	}
	t.Run("top block", func(t *testing.T) {
		h := &memFile{b: bytes.Clone(hash.b)}
		h.b[4096+1] ^= 1
		if err := Verify(bytes.NewReader(data), h, p, root); !errors.Is(err, ErrRootMismatch) {
			t.Fatalf("Verify = %v, want ErrRootMismatch", err)
		}
	})
	t.Run("wrong root", func(t *testing.T) {
		bad := bytes.Clone(root)
		bad[31] ^= 1
		if err := Verify(bytes.NewReader(data), hash, p, bad); !errors.Is(err, ErrRootMismatch) {
			t.Fatalf("Verify = %v, want ErrRootMismatch", err)
		}
	})
	t.Run("wrong salt", func(t *testing.T) {
		q := p
		q.Salt = []byte{1}
		if err := Verify(bytes.NewReader(data), hash, q, root); !errors.Is(err, ErrRootMismatch) {
			t.Fatalf("Verify = %v, want ErrRootMismatch", err)
		}
	})
	t.Run("truncated hash", func(t *testing.T) {
		h := &memFile{b: hash.b[:len(hash.b)-1]}
		if _, err := ReadSuperblock(h, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ReadSuperblock = %v, want io.ErrUnexpectedEOF", err)
		}
		if err := Verify(bytes.NewReader(data), h, p, root); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Verify = %v, want io.ErrUnexpectedEOF", err)
		}
		if _, err := ReadSuperblock(&memFile{b: hash.b[:100]}, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ReadSuperblock of 100 bytes = %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("truncated data", func(t *testing.T) {
		if err := Verify(bytes.NewReader(data[:len(data)-4096]), hash, p, root); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Verify = %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

// TestCorruptionSmall covers trees of one and two levels.
func TestCorruptionSmall(t *testing.T) {
	for _, blocks := range []int{1, 2, 128, 129} {
		t.Run(strconv.Itoa(blocks), func(t *testing.T) {
			data, hash, p, root := tree(t, blocks)
			if err := Verify(bytes.NewReader(data), hash, p, root); err != nil {
				t.Fatalf("Verify of a good tree: %v", err)
			}
			last := blocks - 1
			d := bytes.Clone(data)
			d[last*4096+100] ^= 4
			err := Verify(bytes.NewReader(d), hash, p, root)
			if blocks == 1 {
				if !errors.Is(err, ErrRootMismatch) {
					t.Fatalf("Verify = %v, want ErrRootMismatch", err)
				}
				return
			}
			var ce *CorruptionError
			if !errors.As(err, &ce) || ce.Area != "data" || ce.Block != uint64(last) {
				t.Fatalf("Verify = %v, want data block %d corrupted", err, last)
			}
		})
	}
}

func TestBadSuperblock(t *testing.T) {
	_, hash, _, _ := tree(t, 129)
	good := hash.b[:SuperblockSize]
	if _, err := UnmarshalSuperblock(good); err != nil {
		t.Fatalf("good superblock: %v", err)
	}
	set := func(off int, v ...byte) func([]byte) {
		return func(b []byte) { copy(b[off:], v) }
	}
	for _, tc := range []struct {
		name   string
		mutate func([]byte)
		want   string
	}{
		{"magic", set(0, 'V'), "bad magic"},
		{"version", set(8, 2), "version 2"},
		{"hash type 0", set(12, 0), "hash type 0"},
		{"algorithm", set(32, 'm', 'd', '5', 0, 0, 0), `"md5"`},
		{"algorithm unterminated", func(b []byte) { copy(b[32:64], bytes.Repeat([]byte{'a'}, 32)) }, "NUL-terminated"},
		{"algorithm garbage", set(40, 'x'), "garbage"},
		{"data block size 0", set(64, 0, 0, 0, 0), "block size is zero"},
		{"data block size 3000", set(64, 0xb8, 0x0b, 0, 0), "data block size 3000"},
		{"hash block size 128k", set(68, 0, 0, 2, 0), "hash block size 131072"},
		{"data blocks 0", set(72, 0, 0, 0, 0, 0, 0, 0, 0), "no data blocks"},
		{"data blocks huge", set(72, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), "too large"},
		{"salt size 257", set(80, 1, 1), "salt size 257"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(good)
			tc.mutate(b)
			_, err := UnmarshalSuperblock(b)
			if err == nil || !regexp.MustCompile(regexp.QuoteMeta(tc.want)).MatchString(err.Error()) {
				t.Fatalf("UnmarshalSuperblock = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSuperblockRoundTrip(t *testing.T) {
	p := Params{HashAlg: "sha512", DataBlockSize: 1024, HashBlockSize: 8192, DataBlocks: 12345, Salt: []byte("salty"), UUID: testUUID}
	q, err := UnmarshalSuperblock(p.MarshalSuperblock())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p) != fmt.Sprint(q) {
		t.Fatalf("round trip: %+v != %+v", q, p)
	}
}

func TestBadParams(t *testing.T) {
	data := bytes.NewReader(testData(4096))
	for _, p := range []Params{
		{DataBlocks: 0},
		{DataBlocks: 1, HashAlg: "md5"},
		{DataBlocks: 1, DataBlockSize: 4095},
		{DataBlocks: 1, HashBlockSize: 256},
		{DataBlocks: 1, Salt: make([]byte, 257)},
		{DataBlocks: 1, HashOffset: 100},
		{DataBlocks: 1, HashOffset: -512},
	} {
		if _, err := Format(data, &memFile{}, p); err == nil {
			t.Errorf("Format(%+v) succeeded", p)
		}
		if TreeSize(p) != -1 {
			t.Errorf("TreeSize(%+v) != -1", p)
		}
	}
	if _, err := Format(data, &memFile{}, Params{DataBlocks: 2}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Format beyond the data = %v, want io.ErrUnexpectedEOF", err)
	}
}

func FuzzReadSuperblock(f *testing.F) {
	_, hash, _, _ := tree(f, 129)
	f.Add(hash.b)
	f.Add(hash.b[:SuperblockSize])
	f.Add(Params{HashAlg: "sha1", DataBlockSize: 512, HashBlockSize: 512, DataBlocks: 1}.MarshalSuperblock())
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ReadSuperblock(&memFile{b: b}, 0)
		if err != nil {
			return
		}
		if TreeSize(p) > int64(len(b)) {
			t.Fatalf("accepted a superblock whose tree (%d bytes) exceeds the file (%d)", TreeSize(p), len(b))
		}
		q, err := UnmarshalSuperblock(p.MarshalSuperblock())
		if err != nil || fmt.Sprint(p) != fmt.Sprint(q) {
			t.Fatalf("re-marshalled superblock: %v, %+v != %+v", err, q, p)
		}
	})
}

const benchBlocks = 64 << 20 / 4096

func BenchmarkFormat(b *testing.B) {
	data := bytes.NewReader(testData(benchBlocks * 4096))
	p := Params{DataBlocks: benchBlocks, Salt: testSalt}
	hash := &memFile{b: make([]byte, TreeSize(p))}
	b.SetBytes(benchBlocks * 4096)
	for b.Loop() {
		if _, err := Format(data, hash, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	data, hash, p, root := tree(b, benchBlocks)
	r := bytes.NewReader(data)
	b.SetBytes(benchBlocks * 4096)
	for b.Loop() {
		if err := Verify(r, hash, p, root); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA256Block is the single-core limit Format runs against: one
// salted sha256 per 4096-byte block (run with -cpu 1).
func BenchmarkSHA256Block(b *testing.B) {
	g, err := newGeometry(Params{DataBlocks: 1, Salt: testSalt})
	if err != nil {
		b.Fatal(err)
	}
	h, block, out := g.newHasher(), testData(4096), make([]byte, 32)
	b.SetBytes(4096)
	for b.Loop() {
		h.sum(block, out)
	}
}
