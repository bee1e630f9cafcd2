package initrd

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/vesselos/vessel/internal/boot/tcglog"
)

// Where the kernel shows the TPM's PCRs and the firmware's event log.
const (
	PCR7File     = "/sys/class/tpm/tpm0/pcr-sha256/7"
	EventLogFile = "/sys/kernel/security/tpm0/binary_bios_measurements"
)

// checkPCR7 prints PCR7 as the TPM reports it and as the replay of the
// firmware's event log computes it:
//
//	vessel-init: pcr7 sha256 tpm=<hex> replay=<hex> events=N match=true
//
// A mismatch is printed (match=false) and is an error.
func (s *Stage) checkPCR7() error {
	if err := s.sys.mount(SecurityFS); err != nil {
		return fmt.Errorf("mount securityfs: %w", err)
	}
	b, err := os.ReadFile(s.path(PCR7File))
	if err != nil {
		return fmt.Errorf("read PCR7 (is there a TPM?): %w", err)
	}
	tpm, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("parse %s: %w", PCR7File, err)
	}
	raw, err := os.ReadFile(s.path(EventLogFile))
	if err != nil {
		return fmt.Errorf("read event log: %w", err)
	}
	log, err := tcglog.Parse(raw)
	if err != nil {
		return err
	}
	replay, n, err := log.Replay(7, tcglog.AlgSHA256)
	if err != nil {
		return err
	}
	match := bytes.Equal(tpm, replay)
	s.printf("pcr7 sha256 tpm=%x replay=%x events=%d match=%t", tpm, replay, n, match)
	if !match {
		return fmt.Errorf("PCR7 %x does not equal the replay of the event log %x", tpm, replay)
	}
	return nil
}
