package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Anti-rollback of the system manifest version, kept by the TPM.
//
// A TPM NV counter (TPM_NT_COUNTER) only goes up, by one per
// TPM2_NV_Increment, and can be reset only by deleting it, which needs the
// owner authorization (sealed by vessel). Its first value is not 0 but the
// highest value any counter of this TPM ever held, so a second index,
// written once at provisioning and then write-locked for good
// (TPMA_NV_WRITEDEFINE), keeps the counter's first value and the version
// it stands for:
//
//	accepted version = base version + (counter - base counter)
//
// Incrementing needs no authorization (the counter's authValue is empty):
// the running system, after the lock, can raise it when an update is
// marked good. Anyone with access to the TPM can raise it too; that can
// only make the machine refuse versions it would have accepted (a denial
// of service, as deleting the disk is), never accept a lower one.
const (
	// ManifestCounterIndex is the NV counter.
	ManifestCounterIndex = tpm2.TPMHandle(0x01560003)
	// ManifestBaseIndex holds the counter's first value and the version it
	// stands for (two u64, big endian), write-locked at provisioning.
	ManifestBaseIndex = tpm2.TPMHandle(0x01560004)
	// MaxVersionStep bounds one AdvanceVersion: each step is one
	// NV_Increment (an NV write, a few ms, and wear on a hardware TPM).
	MaxVersionStep = 4096
)

// ErrRollback: a manifest version is lower than the one the TPM recorded.
var ErrRollback = errors.New("manifest version lower than the TPM's accepted version")

// ErrNoVersionCounter: the TPM has no anti-rollback counter (provisioned
// by a vessel from before it existed).
var ErrNoVersionCounter = errors.New("no manifest version counter in the TPM")

func counterNVPublic(written bool) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: ManifestCounterIndex,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			AuthWrite: true, AuthRead: true, OwnerRead: true, NoDA: true,
			NT: tpm2.TPMNTCounter, Written: written,
		},
		DataSize: 8,
	}
}

func baseNVPublic(written bool) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: ManifestBaseIndex,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			AuthWrite: true, AuthRead: true, OwnerRead: true, NoDA: true, WriteDefine: true,
			NT: tpm2.TPMNTOrdinary, Written: written, WriteLocked: written,
		},
		DataSize: 16,
	}
}

// defineVersionCounter defines both indices with the owner authorization
// owner, increments the counter once and write-locks its base, recording
// version as the accepted version.
func (t *TPM) defineVersionCounter(owner tpm2.AuthHandle, version uint64) error {
	for _, pub := range []tpm2.TPMSNVPublic{counterNVPublic(false), baseNVPublic(false)} {
		if _, err := (tpm2.NVDefineSpace{AuthHandle: owner, PublicInfo: tpm2.New2B(pub)}).Execute(t); err != nil {
			return classify(fmt.Sprintf("define NV index 0x%08x", uint32(pub.NVIndex)), err)
		}
	}
	cidx := tpm2.AuthHandle{Handle: ManifestCounterIndex, Name: nvName(counterNVPublic(false)), Auth: tpm2.PasswordAuth(nil)}
	if _, err := (tpm2.NVIncrement{AuthHandle: cidx, NVIndex: tpm2.NamedHandle{Handle: cidx.Handle, Name: cidx.Name}}).Execute(t); err != nil {
		return classify("start manifest version counter", err)
	}
	c0, err := t.readNV(counterNVPublic(true), 8)
	if err != nil {
		return err
	}
	data := append(c0, be64(version)...)
	bidx := tpm2.AuthHandle{Handle: ManifestBaseIndex, Name: nvName(baseNVPublic(false)), Auth: tpm2.PasswordAuth(nil)}
	if _, err := (tpm2.NVWrite{AuthHandle: bidx, NVIndex: tpm2.NamedHandle{Handle: bidx.Handle, Name: bidx.Name}, Data: tpm2.TPM2BMaxNVBuffer{Buffer: data}}).Execute(t); err != nil {
		return classify("write manifest version base", err)
	}
	// Written now: the name changed.
	bidx.Name = nvName(tpm2.TPMSNVPublic{NVIndex: ManifestBaseIndex, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: func() tpm2.TPMANV { a := baseNVPublic(false).Attributes; a.Written = true; return a }(), DataSize: 16})
	if _, err := (tpm2.NVWriteLock{AuthHandle: bidx, NVIndex: tpm2.NamedHandle{Handle: bidx.Handle, Name: bidx.Name}}).Execute(t); err != nil {
		return classify("write-lock manifest version base", err)
	}
	return nil
}

// readNV reads size bytes of the index whose public area is pub.
func (t *TPM) readNV(pub tpm2.TPMSNVPublic, size uint16) ([]byte, error) {
	name := nvName(pub)
	rsp, err := (tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: pub.NVIndex, Name: name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: pub.NVIndex, Name: name},
		Size:       size,
	}).Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, &tpmError{op: fmt.Sprintf("read NV index 0x%08x", uint32(pub.NVIndex)), sentinel: ErrNoVersionCounter, err: err,
				hint: "the TPM was provisioned without the manifest version counter: provision it again"}
		}
		return nil, classify(fmt.Sprintf("read NV index 0x%08x", uint32(pub.NVIndex)), err)
	}
	return rsp.Data.Buffer, nil
}

// AcceptedVersion returns the highest system manifest version the TPM
// recorded as accepted (two NV reads).
func (t *TPM) AcceptedVersion() (uint64, error) {
	base, err := t.readNV(baseNVPublic(true), 16)
	if err != nil {
		return 0, err
	}
	c, err := t.readNV(counterNVPublic(true), 8)
	if err != nil {
		return 0, err
	}
	c0, v0, cur := binary.BigEndian.Uint64(base[:8]), binary.BigEndian.Uint64(base[8:]), binary.BigEndian.Uint64(c)
	if cur < c0 {
		return 0, fmt.Errorf("manifest version counter %d is below its base %d: the TPM's indices were altered", cur, c0)
	}
	return v0 + (cur - c0), nil
}

// CheckVersion refuses (ErrRollback) a manifest version lower than the
// TPM's accepted version, and returns that version.
func (t *TPM) CheckVersion(v uint64) (uint64, error) {
	acc, err := t.AcceptedVersion()
	if err != nil {
		return 0, err
	}
	if v < acc {
		return acc, fmt.Errorf("manifest version %d: %w %d (NV counter 0x%08x; a deleted or edited trust/versions.json does not lower it)",
			v, ErrRollback, acc, uint32(ManifestCounterIndex))
	}
	return acc, nil
}

// AdvanceVersion raises the TPM's accepted manifest version to v (one
// NV_Increment per step) and returns the accepted version after it. A v at
// or below the current one changes nothing: the counter never goes down.
// This is the call to make when a new system version is marked good.
func (t *TPM) AdvanceVersion(v uint64) (uint64, error) {
	acc, err := t.AcceptedVersion()
	if err != nil {
		return 0, err
	}
	if v <= acc {
		return acc, nil
	}
	if v-acc > MaxVersionStep {
		return acc, fmt.Errorf("advance manifest version from %d to %d: a step of more than %d versions (each is one TPM NV increment) is refused", acc, v, MaxVersionStep)
	}
	name := nvName(counterNVPublic(true))
	h := tpm2.AuthHandle{Handle: ManifestCounterIndex, Name: name, Auth: tpm2.PasswordAuth(nil)}
	for ; acc < v; acc++ {
		if _, err := (tpm2.NVIncrement{AuthHandle: h, NVIndex: tpm2.NamedHandle{Handle: h.Handle, Name: name}}).Execute(t); err != nil {
			return acc, classify(fmt.Sprintf("advance manifest version counter to %d", acc+1), err)
		}
	}
	return acc, nil
}

// OpenCounter opens the TPM at dev for its manifest version counter. A
// machine without a TPM, or whose TPM has no counter (not provisioned by
// vessel's initrd), gives nil and no error: its anti-rollback record is the
// file alone. Close the returned TPM.
func OpenCounter(dev string) (*TPM, error) {
	t, err := Open(dev)
	if errors.Is(err, ErrNoTPM) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := t.AcceptedVersion(); errors.Is(err, ErrNoVersionCounter) {
		t.Close()
		return nil, nil
	} else if err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}
