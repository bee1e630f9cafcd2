package initrd

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/trust"
)

// TPMDevice is the kernel's TPM resource manager, what the stage opens.
const TPMDevice = "/dev/tpmrm0"

// PCRFile is where the kernel shows a sha256-bank PCR (%d: its index).
const PCRFile = "/sys/class/tpm/tpm0/pcr-sha256/%d"

// tpmDevice is what the stage does with a TPM.
type tpmDevice interface {
	measure.Extender
	PCR(n int) ([]byte, error)
	Close() error
}

// tpmSystem is a system with a TPM to open (the real one: system_linux.go).
type tpmSystem interface {
	openTPM() (tpmDevice, error)
}

// errNoTPM is what openTPM returns (wrapped) when the machine has none.
var errNoTPM = errors.New("no TPM")

// measureManifest extends measure.PCR with the verified manifest's digest,
// product and version and records the event in measure.LogFile, which
// switch_root carries to the host's /run for `vessel attest`. A machine
// without a TPM, or a TPM that refuses, boots on with a warning: its
// verification stands, and a verifier refuses it anyway (no quote, or a
// log that does not replay).
func (s *Stage) measureManifest(vm *trust.VerifiedManifest) {
	ts, ok := s.sys.(tpmSystem)
	if !ok {
		s.printf("WARNING: no TPM: manifest not measured; this boot cannot be attested")
		return
	}
	t, err := ts.openTPM()
	if err != nil {
		s.printf("WARNING: %v: manifest not measured; this boot cannot be attested", err)
		return
	}
	defer t.Close()
	ev := measure.ManifestEvent(measure.Manifest{Digest: vm.Digest().String(), ProductID: vm.ProductID(), Version: vm.Version()})
	if err := (measure.Log{Path: s.path(measure.LogFile)}).Measure(t, ev); err != nil {
		s.printf("WARNING: %v; this boot cannot be attested", err)
		return
	}
	v, err := t.PCR(measure.PCR)
	if err != nil {
		s.printf("WARNING: read PCR %d after measuring: %v", measure.PCR, err)
		return
	}
	s.printf("measured %s into PCR %d: %x", ev.Data, measure.PCR, v)
}

// reportPCR15 prints, on the host, vessel's PCR as the TPM shows it and as
// the measurement log replays it, and the manifest the log names:
//
//	vessel-host: pcr15 sha256 tpm=<hex> replay=<hex> events=N match=true manifest=sha256:… version=N
func reportPCR15(root string, printf func(string, ...any)) error {
	evs, err := measure.Read(root + measure.LogFile)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(fmt.Sprintf(root+PCRFile, measure.PCR))
	if err != nil {
		printf("pcr%d: no TPM PCR to compare (%v)", measure.PCR, err)
		return nil
	}
	tpm, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("parse PCR %d: %w", measure.PCR, err)
	}
	replay, n := measure.Replay(evs, measure.PCR)
	manifest := "none"
	for _, ev := range evs {
		if m, err := measure.ParseManifest(ev); err == nil {
			manifest = fmt.Sprintf("%s version=%d", m.Digest, m.Version)
		}
	}
	printf("pcr%d sha256 tpm=%x replay=%x events=%d match=%t manifest=%s", measure.PCR, tpm, replay, n, string(tpm) == string(replay), manifest)
	return nil
}
