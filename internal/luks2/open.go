package luks2

import (
	"bytes"
	"crypto/aes"
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/crypto/xts"
)

// ErrPassphrase: the passphrase does not open keyslot 0.
var ErrPassphrase = errors.New("passphrase does not open the LUKS2 keyslot")

// Segment is the data segment of a volume, what dm-crypt needs besides the key.
type Segment struct {
	Offset     int64  // bytes from the start of the device
	Encryption string // dm-crypt cipher spec (aes-xts-plain64)
	SectorSize int
	IVTweak    uint64
}

// VolumeKey reads the primary header of the LUKS2 volume at path (checksum
// checked) and recovers the volume key from keyslot 0 with passphrase. It
// reads what Format writes (pbkdf2-sha256 keyslot, luks1 AF with sha256,
// aes-xts-plain64 area) and refuses anything else by name. The key is
// returned so the caller can hand it to the kernel's keyring instead of
// writing it into a device-mapper table that root can read back.
func VolumeKey(path string, passphrase []byte) ([]byte, *Segment, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("luks2: %w", err)
	}
	defer f.Close()
	h := make([]byte, HeaderSize)
	if _, err := f.ReadAt(h, 0); err != nil {
		return nil, nil, fmt.Errorf("luks2: read header of %s: %w", path, err)
	}
	if !bytes.Equal(h[:6], Magic) || binary.BigEndian.Uint16(h[6:8]) != 2 {
		return nil, nil, fmt.Errorf("luks2: %s has no LUKS2 header", path)
	}
	if hs := binary.BigEndian.Uint64(h[8:16]); hs != HeaderSize {
		return nil, nil, fmt.Errorf("luks2: %s: header size %d, vessel reads %d", path, hs, HeaderSize)
	}
	want := bytes.Clone(h[448:480])
	clear(h[448:512])
	if sum := sha256.Sum256(h); !bytes.Equal(sum[:], want) {
		return nil, nil, fmt.Errorf("luks2: %s: header checksum mismatch", path)
	}
	js := h[4096:]
	if i := bytes.IndexByte(js, 0); i >= 0 {
		js = js[:i]
	}
	var m jsonMeta
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, nil, fmt.Errorf("luks2: %s: metadata: %w", path, err)
	}
	ks, ok := m.Keyslots["0"]
	if !ok {
		return nil, nil, fmt.Errorf("luks2: %s: no keyslot 0", path)
	}
	if ks.KDF.Type != "pbkdf2" || ks.KDF.Hash != "sha256" || ks.AF.Type != "luks1" || ks.AF.Hash != "sha256" ||
		ks.Area.Encryption != cipherName || ks.KeySize != KeySize || ks.Area.KeySize != KeySize {
		return nil, nil, fmt.Errorf("luks2: %s: keyslot 0 is %s/%s, AF %s/%s, %s: vessel reads pbkdf2/sha256, luks1/sha256, %s with %d-byte keys",
			path, ks.KDF.Type, ks.KDF.Hash, ks.AF.Type, ks.AF.Hash, ks.Area.Encryption, cipherName, KeySize)
	}
	dg, ok := m.Digests["0"]
	seg, ok2 := m.Segments["0"]
	if !ok || !ok2 || dg.Type != "pbkdf2" || dg.Hash != "sha256" {
		return nil, nil, fmt.Errorf("luks2: %s: want digest 0 (pbkdf2-sha256) and segment 0", path)
	}
	salt, err := base64.StdEncoding.DecodeString(ks.KDF.Salt)
	if err != nil {
		return nil, nil, fmt.Errorf("luks2: keyslot salt: %w", err)
	}
	off, err1 := strconv.ParseInt(ks.Area.Offset, 10, 64)
	size, err2 := strconv.ParseInt(ks.Area.Size, 10, 64)
	if err1 != nil || err2 != nil || size < int64(KeySize*ks.AF.Stripes) || size%SectorSize != 0 || ks.AF.Stripes < 1 {
		return nil, nil, fmt.Errorf("luks2: %s: bad keyslot area", path)
	}
	area := make([]byte, size)
	if _, err := f.ReadAt(area, off); err != nil {
		return nil, nil, fmt.Errorf("luks2: read keyslot area: %w", err)
	}
	areaKey, err := pbkdf2.Key(sha256.New, string(passphrase), salt, ks.KDF.Iterations, KeySize)
	if err != nil {
		return nil, nil, err
	}
	c, err := xts.NewCipher(aes.NewCipher, areaKey)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i < len(area); i += SectorSize {
		c.Decrypt(area[i:i+SectorSize], area[i:i+SectorSize], uint64(i/SectorSize))
	}
	vk := afMerge(area[:KeySize*ks.AF.Stripes], KeySize, ks.AF.Stripes)
	dsalt, err := base64.StdEncoding.DecodeString(dg.Salt)
	if err != nil {
		return nil, nil, fmt.Errorf("luks2: digest salt: %w", err)
	}
	wantDigest, err := base64.StdEncoding.DecodeString(dg.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("luks2: digest: %w", err)
	}
	got, err := pbkdf2.Key(sha256.New, string(vk), dsalt, dg.Iterations, len(wantDigest))
	if err != nil {
		return nil, nil, err
	}
	if subtle.ConstantTimeCompare(got, wantDigest) != 1 {
		clear(vk)
		return nil, nil, fmt.Errorf("luks2: %s: %w", path, ErrPassphrase)
	}
	sOff, err := strconv.ParseInt(seg.Offset, 10, 64)
	if err != nil || sOff%SectorSize != 0 {
		return nil, nil, fmt.Errorf("luks2: %s: bad segment offset %q", path, seg.Offset)
	}
	tweak, err := strconv.ParseUint(seg.IVTweak, 10, 64)
	if err != nil {
		return nil, nil, fmt.Errorf("luks2: %s: bad iv_tweak %q", path, seg.IVTweak)
	}
	return vk, &Segment{Offset: sOff, Encryption: seg.Encryption, SectorSize: seg.SectorSize, IVTweak: tweak}, nil
}

// afMerge undoes afSplit.
func afMerge(src []byte, bs, n int) []byte {
	acc := make([]byte, bs)
	for i := 0; i < n-1; i++ {
		for j := range acc {
			acc[j] ^= src[i*bs+j]
		}
		acc = diffuse(acc)
	}
	out := make([]byte, bs)
	for j := range out {
		out[j] = acc[j] ^ src[(n-1)*bs+j]
	}
	return out
}
