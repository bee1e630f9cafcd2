package secureboot

import "github.com/vesselos/vessel/internal/boot/pkcs7"

func wrapForTest(sd []byte) []byte { return pkcs7.WrapSignedData(sd) }
