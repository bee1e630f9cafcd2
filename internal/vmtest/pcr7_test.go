package vmtest

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// PredictPCR7 computes offline, from the key set alone, the PCR7 that OVMF
// measures when Secure Boot is on and the UKI is verified by the db
// certificate (no dbx): SecureBoot, PK, KEK, db, dbx (absent: empty), the
// separator, then the db certificate that verified the image
// (EV_EFI_VARIABLE_AUTHORITY). Each variable digest is
// SHA256(GUID || u64 name length in chars || u64 data length || UTF-16LE name || data).
func PredictPCR7(ks *secureboot.KeySet) ([]byte, error) {
	vars, err := ks.Variables(nil)
	if err != nil {
		return nil, err
	}
	events := []secureboot.Variable{{Name: "SecureBoot", GUID: secureboot.GlobalVariable, Data: []byte{1}}}
	events = append(events, vars...)
	events = append(events, secureboot.Variable{Name: "dbx", GUID: secureboot.ImageSecurityDatabase})
	digest := func(v secureboot.Variable) []byte {
		h := sha256.New()
		h.Write(v.GUID[:])
		binary.Write(h, binary.LittleEndian, uint64(len([]rune(v.Name))))
		binary.Write(h, binary.LittleEndian, uint64(len(v.Data)))
		h.Write(v.UTF16Name())
		h.Write(v.Data)
		return h.Sum(nil)
	}
	var digests [][]byte
	for _, v := range events {
		digests = append(digests, digest(v))
	}
	sep := sha256.Sum256([]byte{0, 0, 0, 0})
	digests = append(digests, sep[:])
	authority := append(append([]byte(nil), ks.Owner[:]...), ks.DB.Cert.Raw...)
	digests = append(digests, digest(secureboot.Variable{Name: "db", GUID: secureboot.ImageSecurityDatabase, Data: authority}))
	pcr := make([]byte, sha256.Size)
	for _, d := range digests {
		h := sha256.New()
		h.Write(pcr)
		h.Write(d)
		pcr = h.Sum(nil)
	}
	return pcr, nil
}
