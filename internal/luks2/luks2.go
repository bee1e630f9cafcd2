// Package luks2 writes LUKS2 headers and encrypts a volume's contents in
// place, so that a machine can make its own encrypted volume at first boot
// without cryptsetup (vessel's initrd has no userland). Unlocking and the
// device-mapper table are left to github.com/anatol/luks.go, an
// independent reader of what this package writes; `cryptsetup luksDump`
// and `cryptsetup open --test-passphrase` read it too (tests check both).
//
// What is written is one fixed, conservative layout, the one
// `cryptsetup luksFormat --type luks2 --pbkdf pbkdf2` makes by default:
//
//	0        primary binary header + JSON area (16 KiB)
//	16 KiB   secondary binary header + JSON area (16 KiB)
//	32 KiB   keyslot 0: the volume key, AF-split (4000 stripes, sha256),
//	         encrypted with aes-xts-plain64 under PBKDF2(passphrase)
//	16 MiB   the encrypted data segment (aes-xts-plain64, 512-byte
//	         sectors, IV = sector number from the segment start)
//
// The passphrase is expected to be a random secret (vessel seals it in
// the TPM), so PBKDF2 runs a fixed 1000 iterations: a slow KDF protects
// guessable passphrases, not random ones.
package luks2

import (
	"bytes"
	"crypto/aes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/crypto/xts"
)

// Layout constants.
const (
	HeaderSize    = 16 << 10 // one binary header + JSON area
	JSONSize      = HeaderSize - 4096
	KeyslotOffset = 2 * HeaderSize
	// DataOffset is where the encrypted segment starts.
	DataOffset = 16 << 20
	// KeySize is the volume key size for aes-xts-plain64 (AES-256-XTS).
	KeySize    = 64
	SectorSize = 512
	stripes    = 4000
	iterations = 1000
	cipherName = "aes-xts-plain64"
)

// Magic is the primary header's magic.
var Magic = []byte("LUKS\xba\xbe")

var secondaryMagic = []byte("SKUL\xba\xbe")

// IsLUKS reports whether the device or file at path starts with a LUKS header.
func IsLUKS(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, len(Magic))
	if _, err := io.ReadFull(f, b); err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return bytes.Equal(b, Magic), nil
}

type jsonKDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash"`
	Iterations int    `json:"iterations"`
	Salt       string `json:"salt"`
}

type jsonKeyslot struct {
	Type    string `json:"type"`
	KeySize int    `json:"key_size"`
	AF      struct {
		Type    string `json:"type"`
		Stripes int    `json:"stripes"`
		Hash    string `json:"hash"`
	} `json:"af"`
	Area struct {
		Type       string `json:"type"`
		Offset     string `json:"offset"`
		Size       string `json:"size"`
		Encryption string `json:"encryption"`
		KeySize    int    `json:"key_size"`
	} `json:"area"`
	KDF jsonKDF `json:"kdf"`
}

type jsonSegment struct {
	Type       string `json:"type"`
	Offset     string `json:"offset"`
	Size       string `json:"size"`
	IVTweak    string `json:"iv_tweak"`
	Encryption string `json:"encryption"`
	SectorSize int    `json:"sector_size"`
}

type jsonDigest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       string   `json:"salt"`
	Digest     string   `json:"digest"`
}

type jsonMeta struct {
	Keyslots map[string]jsonKeyslot `json:"keyslots"`
	Tokens   map[string]any         `json:"tokens"`
	Segments map[string]jsonSegment `json:"segments"`
	Digests  map[string]jsonDigest  `json:"digests"`
	Config   struct {
		JSONSize     string `json:"json_size"`
		KeyslotsSize string `json:"keyslots_size"`
	} `json:"config"`
}

// Options for Format.
type Options struct {
	Label string // up to 47 bytes
	UUID  string // default random
}

// Format writes a LUKS2 header to the first DataOffset bytes of the file
// or block device at path, with one keyslot that opens the volume key vk
// (KeySize random bytes) with passphrase. It does not touch the data
// segment (see EncryptInPlace).
func Format(path string, vk, passphrase []byte, o Options) error {
	if len(vk) != KeySize {
		return fmt.Errorf("luks2: volume key is %d bytes, want %d", len(vk), KeySize)
	}
	if len(passphrase) == 0 {
		return errors.New("luks2: empty passphrase")
	}
	if len(o.Label) > 47 {
		return fmt.Errorf("luks2: label %q longer than 47 bytes", o.Label)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("luks2: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("luks2: size of %s: %w", path, err)
	}
	if size < DataOffset+1<<20 {
		return fmt.Errorf("luks2: %s is %d bytes: want at least %d (16 MiB header + 1 MiB data)", path, size, DataOffset+1<<20)
	}
	uuid := o.UUID
	if uuid == "" {
		if uuid, err = randomUUID(); err != nil {
			return err
		}
	}
	// Keyslot: PBKDF2 -> key for the keyslot area; AF-split volume key.
	ksSalt, dgSalt := make([]byte, 32), make([]byte, 32)
	if _, err := rand.Read(ksSalt); err != nil {
		return err
	}
	if _, err := rand.Read(dgSalt); err != nil {
		return err
	}
	areaKey, err := pbkdf2.Key(sha256.New, string(passphrase), ksSalt, iterations, KeySize)
	if err != nil {
		return fmt.Errorf("luks2: keyslot KDF: %w", err)
	}
	split, err := afSplit(vk, stripes)
	if err != nil {
		return err
	}
	areaSize := (len(split) + 4095) / 4096 * 4096
	area := make([]byte, areaSize)
	copy(area, split)
	if err := encryptSectors(areaKey, area, area, 0); err != nil {
		return err
	}
	digest, err := pbkdf2.Key(sha256.New, string(vk), dgSalt, iterations, 32)
	if err != nil {
		return fmt.Errorf("luks2: digest: %w", err)
	}
	var ks jsonKeyslot
	ks.Type, ks.KeySize = "luks2", KeySize
	ks.AF.Type, ks.AF.Stripes, ks.AF.Hash = "luks1", stripes, "sha256"
	ks.Area.Type, ks.Area.Offset, ks.Area.Size = "raw", strconv.Itoa(KeyslotOffset), strconv.Itoa(areaSize)
	ks.Area.Encryption, ks.Area.KeySize = cipherName, KeySize
	ks.KDF = jsonKDF{Type: "pbkdf2", Hash: "sha256", Iterations: iterations, Salt: base64.StdEncoding.EncodeToString(ksSalt)}
	m := jsonMeta{
		Keyslots: map[string]jsonKeyslot{"0": ks},
		Tokens:   map[string]any{},
		Segments: map[string]jsonSegment{"0": {Type: "crypt", Offset: strconv.Itoa(DataOffset), Size: "dynamic",
			IVTweak: "0", Encryption: cipherName, SectorSize: SectorSize}},
		Digests: map[string]jsonDigest{"0": {Type: "pbkdf2", Keyslots: []string{"0"}, Segments: []string{"0"}, Hash: "sha256",
			Iterations: iterations, Salt: base64.StdEncoding.EncodeToString(dgSalt), Digest: base64.StdEncoding.EncodeToString(digest)}},
	}
	m.Config.JSONSize = strconv.Itoa(JSONSize)
	m.Config.KeyslotsSize = strconv.Itoa(DataOffset - KeyslotOffset)
	js, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(js) >= JSONSize {
		return errors.New("luks2: JSON metadata too large")
	}
	// Clear the whole header region first (an old header or keyslot must
	// not survive), then the keyslot, then both headers.
	if _, err := f.WriteAt(make([]byte, DataOffset), 0); err != nil {
		return fmt.Errorf("luks2: clear header area of %s: %w", path, err)
	}
	if _, err := f.WriteAt(area, KeyslotOffset); err != nil {
		return fmt.Errorf("luks2: write keyslot: %w", err)
	}
	for i, off := range []int64{0, HeaderSize} {
		hdr, err := header(i == 0, off, uuid, o.Label, js)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(hdr, off); err != nil {
			return fmt.Errorf("luks2: write header: %w", err)
		}
	}
	return f.Sync()
}

// header builds one binary header with its JSON area, checksummed.
func header(primary bool, offset int64, uuid, label string, js []byte) ([]byte, error) {
	h := make([]byte, HeaderSize)
	if primary {
		copy(h[0:6], Magic)
	} else {
		copy(h[0:6], secondaryMagic)
	}
	binary.BigEndian.PutUint16(h[6:8], 2)
	binary.BigEndian.PutUint64(h[8:16], HeaderSize)
	binary.BigEndian.PutUint64(h[16:24], 1) // seqid
	copy(h[24:72], label)
	copy(h[72:104], "sha256")
	if _, err := rand.Read(h[104:168]); err != nil {
		return nil, err
	}
	copy(h[168:208], uuid)
	binary.BigEndian.PutUint64(h[256:264], uint64(offset))
	copy(h[4096:], js)
	sum := sha256.Sum256(h) // with the checksum field zero
	copy(h[448:512], sum[:])
	return h, nil
}

// encryptSectors encrypts src into dst (same length, a multiple of
// SectorSize) with aes-xts-plain64, the first sector numbered first.
func encryptSectors(key, dst, src []byte, first uint64) error {
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		return fmt.Errorf("luks2: cipher: %w", err)
	}
	for i := 0; i < len(src); i += SectorSize {
		c.Encrypt(dst[i:i+SectorSize], src[i:i+SectorSize], first+uint64(i/SectorSize))
	}
	return nil
}

// EncryptInPlace encrypts the plaintext that lies in the data segment of
// the LUKS2 volume at path (from DataOffset to the end), sector by sector,
// with the volume key vk: a filesystem written there in the clear before
// Format becomes that filesystem encrypted, readable through dm-crypt. It
// reads each chunk before it writes it; an interrupted run leaves a volume
// that is part encrypted (start again from a fresh filesystem).
func EncryptInPlace(path string, vk []byte) (int64, error) {
	if len(vk) != KeySize {
		return 0, fmt.Errorf("luks2: volume key is %d bytes, want %d", len(vk), KeySize)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("luks2: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	c, err := xts.NewCipher(aes.NewCipher, vk)
	if err != nil {
		return 0, fmt.Errorf("luks2: cipher: %w", err)
	}
	buf := make([]byte, 1<<20)
	var done int64
	for off := int64(DataOffset); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		n -= n % SectorSize
		if n == 0 {
			break
		}
		b := buf[:n]
		if _, err := f.ReadAt(b, off); err != nil {
			return done, fmt.Errorf("luks2: read %s at %d: %w", path, off, err)
		}
		sec := uint64(off-DataOffset) / SectorSize
		for i := 0; i < len(b); i += SectorSize {
			c.Encrypt(b[i:i+SectorSize], b[i:i+SectorSize], sec+uint64(i/SectorSize))
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return done, fmt.Errorf("luks2: write %s at %d: %w", path, off, err)
		}
		done += n
	}
	return done, f.Sync()
}

// afSplit is LUKS's anti-forensic split of key into n stripes with
// sha256 diffusion: n-1 random stripes, the last one the key XOR the
// diffused accumulation of the others.
func afSplit(key []byte, n int) ([]byte, error) {
	bs := len(key)
	out := make([]byte, bs*n)
	if _, err := rand.Read(out[:bs*(n-1)]); err != nil {
		return nil, err
	}
	acc := make([]byte, bs)
	for i := 0; i < n-1; i++ {
		for j := range acc {
			acc[j] ^= out[i*bs+j]
		}
		acc = diffuse(acc)
	}
	for j := range acc {
		out[(n-1)*bs+j] = acc[j] ^ key[j]
	}
	return out, nil
}

// diffuse hashes each sha256-sized block of b with its index (u32 big
// endian) prepended; the last, shorter block keeps its length.
func diffuse(b []byte) []byte {
	out := make([]byte, len(b))
	for i, off := 0, 0; off < len(b); i, off = i+1, off+sha256.Size {
		end := min(off+sha256.Size, len(b))
		h := sha256.New()
		var idx [4]byte
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		h.Write(idx[:])
		h.Write(b[off:end])
		copy(out[off:end], h.Sum(nil))
	}
	return out
}

func randomUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}
