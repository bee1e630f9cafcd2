package secureboot

import (
	"testing"
)

func FuzzParseLists(f *testing.F) {
	l, _ := SHA256List(GlobalVariable, [][32]byte{{1}, {2}}).Bytes()
	f.Add(l)
	f.Fuzz(func(t *testing.T, b []byte) {
		lists, err := ParseLists(b)
		if err != nil {
			return
		}
		again, err := MarshalLists(lists)
		if err == nil && len(again) != len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(again), len(b))
		}
	})
}

func FuzzParseSignedUpdate(f *testing.F) {
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseSignedUpdate(b)
		if err == nil && len(u.SignedData)+len(u.Data) > len(b) {
			t.Fatal("parsed more than the input")
		}
	})
}
