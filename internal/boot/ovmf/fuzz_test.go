package ovmf

import (
	"os"
	"testing"

	"github.com/vesselos/vessel/internal/boot/secureboot"
)

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile(DefaultTemplate); err == nil {
		s, err := Write(b, []secureboot.Variable{{Name: "x", GUID: secureboot.GlobalVariable, Attributes: 7, Data: []byte{1}}})
		if err == nil {
			f.Add(s.Bytes()[:0x200])
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		for _, v := range s.Variables {
			if v.Offset < 0 || v.Offset >= len(b) {
				t.Fatalf("variable offset %d outside %d bytes", v.Offset, len(b))
			}
		}
	})
}
