package tpm

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Info describes a TPM and what vessel has set up in it.
type Info struct {
	Manufacturer    string   `json:"manufacturer"`
	Vendor          string   `json:"vendor"`
	FirmwareVersion string   `json:"firmwareVersion"`
	Algorithms      []string `json:"algorithms"`
	PCRBanks        []string `json:"pcrBanks"`
	Persistent      []string `json:"persistentHandles"`
	Transient       int      `json:"transientHandles"`
	OwnerAuthSet    bool     `json:"ownerAuthSet"`
	InLockout       bool     `json:"inLockout"`
	LockoutCounter  uint32   `json:"lockoutCounter"`
	SRK             string   `json:"srk"` // "standard", "other", "absent"
	PolicyVersion   *uint64  `json:"policyVersion,omitempty"`
	// AcceptedVersion is the manifest version counter (anti-rollback).
	AcceptedVersion *uint64 `json:"acceptedManifestVersion,omitempty"`
	PCR7            Hex     `json:"pcr7,omitempty"`
}

// Info reads what the TPM says about itself.
func (t *TPM) Info() (*Info, error) {
	in := &Info{}
	props := map[tpm2.TPMPT]uint32{}
	for _, pr := range []struct{ first, n uint32 }{{uint32(tpm2.TPMPTManufacturer), 8}, {uint32(tpm2.TPMPTPermanent), 1}, {uint32(tpm2.TPMPTLockoutCounter), 1}} {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: pr.first, PropertyCount: pr.n}).Execute(t)
		if err != nil {
			return nil, classify("read TPM properties", err)
		}
		l, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil {
			return nil, err
		}
		for _, p := range l.TPMProperty {
			props[p.Property] = p.Value
		}
	}
	in.Manufacturer = fourCC(props[tpm2.TPMPTManufacturer])
	for i := tpm2.TPMPTVendorString1; i <= tpm2.TPMPTVendorString1+3; i++ {
		in.Vendor += fourCC(props[i])
	}
	in.Vendor = strings.TrimSpace(in.Vendor)
	fw1, fw2 := props[tpm2.TPMPTFirmwareVersion1], props[tpm2.TPMPTFirmwareVersion1+1]
	in.FirmwareVersion = fmt.Sprintf("%d.%d.%d.%d", fw1>>16, fw1&0xffff, fw2>>16, fw2&0xffff)
	perm := props[tpm2.TPMPTPermanent]
	in.OwnerAuthSet = perm&1 != 0
	in.InLockout = perm&(1<<9) != 0
	in.LockoutCounter = props[tpm2.TPMPTLockoutCounter]

	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapAlgs, Property: 0, PropertyCount: 64}).Execute(t)
	if err != nil {
		return nil, classify("list algorithms", err)
	}
	algs, err := rsp.CapabilityData.Data.Algorithms()
	if err != nil {
		return nil, err
	}
	for _, a := range algs.AlgProperties {
		in.Algorithms = append(in.Algorithms, algName(a.Alg))
	}
	banks, err := t.pcrBanks()
	if err != nil {
		return nil, err
	}
	for _, b := range banks {
		in.PCRBanks = append(in.PCRBanks, algName(tpm2.TPMAlgID(b)))
	}
	handles := func(first tpm2.TPMHandle) ([]tpm2.TPMHandle, error) {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}).Execute(t)
		if err != nil {
			return nil, classify("list handles", err)
		}
		l, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, err
		}
		return l.Handle, nil
	}
	ps, err := handles(0x81000000)
	if err != nil {
		return nil, err
	}
	for _, h := range ps {
		in.Persistent = append(in.Persistent, fmt.Sprintf("0x%08x", uint32(h)))
	}
	ts, err := handles(0x80000000)
	if err != nil {
		return nil, err
	}
	in.Transient = len(ts)
	in.SRK = "absent"
	if _, pub, err := t.srk(); err == nil {
		in.SRK = "other"
		if isStandardSRK(pub) {
			in.SRK = "standard"
		}
	}
	if v, err := t.AcceptedVersion(); err == nil {
		in.AcceptedVersion = &v
	}
	if v, err := t.PolicyVersion(); err == nil {
		in.PolicyVersion = &v
	}
	if p, err := t.PCR7(); err == nil {
		in.PCR7 = p
	}
	return in, nil
}

// TransientHandles lists the loaded transient objects (for leak checks).
func (t *TPM) TransientHandles() (int, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 64}).Execute(t)
	if err != nil {
		return 0, classify("list transient handles", err)
	}
	l, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return 0, err
	}
	return len(l.Handle), nil
}

func fourCC(v uint32) string {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return strings.TrimRight(string(b), "\x00 ")
}

var algNames = map[tpm2.TPMAlgID]string{
	tpm2.TPMAlgRSA: "rsa", tpm2.TPMAlgSHA1: "sha1", tpm2.TPMAlgHMAC: "hmac", tpm2.TPMAlgAES: "aes",
	tpm2.TPMAlgKeyedHash: "keyedhash", tpm2.TPMAlgXOR: "xor", tpm2.TPMAlgSHA256: "sha256",
	tpm2.TPMAlgSHA384: "sha384", tpm2.TPMAlgSHA512: "sha512", tpm2.TPMAlgNull: "null",
	tpm2.TPMAlgSM3256: "sm3_256", tpm2.TPMAlgSM4: "sm4", tpm2.TPMAlgRSASSA: "rsassa",
	tpm2.TPMAlgRSAES: "rsaes", tpm2.TPMAlgRSAPSS: "rsapss", tpm2.TPMAlgOAEP: "oaep",
	tpm2.TPMAlgECDSA: "ecdsa", tpm2.TPMAlgECDH: "ecdh", tpm2.TPMAlgECDAA: "ecdaa",
	tpm2.TPMAlgSM2: "sm2", tpm2.TPMAlgECSchnorr: "ecschnorr", tpm2.TPMAlgECMQV: "ecmqv",
	tpm2.TPMAlgKDF1SP80056A: "kdf1_sp800_56a", tpm2.TPMAlgKDF2: "kdf2", tpm2.TPMAlgKDF1SP800108: "kdf1_sp800_108",
	tpm2.TPMAlgECC: "ecc", tpm2.TPMAlgSymCipher: "symcipher", tpm2.TPMAlgCamellia: "camellia",
	tpm2.TPMAlgSHA3256: "sha3_256", tpm2.TPMAlgSHA3384: "sha3_384", tpm2.TPMAlgSHA3512: "sha3_512",
	tpm2.TPMAlgMGF1: "mgf1", tpm2.TPMAlgCMAC: "cmac", tpm2.TPMAlgCTR: "ctr", tpm2.TPMAlgOFB: "ofb", tpm2.TPMAlgCBC: "cbc", tpm2.TPMAlgCFB: "cfb", tpm2.TPMAlgECB: "ecb",
}

func algName(a tpm2.TPMAlgID) string {
	if n, ok := algNames[a]; ok {
		return n
	}
	return fmt.Sprintf("0x%04x", uint16(a))
}
