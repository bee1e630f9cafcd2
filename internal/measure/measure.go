// Package measure keeps vessel's own measurement log: every PCR extension
// vessel makes during a boot (the verified system manifest, the lock that
// ends unsealing), as data a remote verifier can replay against a TPM quote.
//
// The firmware keeps its log (binary_bios_measurements, parsed by
// internal/boot/tcglog); this is the log of what comes after it. An event is
// a type and a text; what goes into the PCR is the hash of the text in each
// bank, so the log holds everything a verifier needs and nothing it must
// trust: a log that was altered, reordered or cut short no longer replays to
// the quoted PCR values.
//
// The log is a JSON Lines file (one Event per line) on the initrd's /run,
// which the switch to the host root moves to the host's /run.
package measure

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PCR is vessel's PCR for what the initrd verified. PCRs 0-7 belong to the
// firmware, 8-9 to the boot loader and kernel (the Linux EFI stub measures
// the initrd and command line into 9), 10 to IMA, 11-13 to systemd-stub's
// UKI, command-line and extension measurements, 14 to shim; 16 and 23 can be
// reset by software and prove nothing. 15 is left: in the UAPI registry it is
// "system identity", which is what vessel records there, and a vessel
// machine runs no systemd userspace to extend it.
const PCR = 15

// LogFile is where the initrd writes the log; it is the same path on the
// host after switch_root.
const LogFile = "/run/vessel/measurements.jsonl"

// Event types vessel records.
const (
	// TypeManifest: the system manifest the initrd verified (ManifestText).
	TypeManifest = "vessel-manifest"
	// TypeLock: the extension that ends unsealing for the rest of the boot.
	TypeLock = "vessel-lock"
)

// Event is one PCR extension.
type Event struct {
	PCR  int    `json:"pcr"`
	Type string `json:"type"`
	// Data is the measured text: each bank of PCR is extended with the
	// bank's hash of these bytes.
	Data string `json:"data"`
	// SHA256 is sha256(Data), hex; kept so the log reads without tools.
	// Replay recomputes it and refuses a log where it differs.
	SHA256 string `json:"sha256"`
}

// NewEvent makes the event for data extended into pcr.
func NewEvent(pcr int, typ, data string) Event {
	sum := sha256.Sum256([]byte(data))
	return Event{PCR: pcr, Type: typ, Data: data, SHA256: hex.EncodeToString(sum[:])}
}

// Extender extends a PCR of every active bank with that bank's hash of data
// (*tpm.TPM implements it).
type Extender interface {
	Extend(pcr int, data []byte) error
}

// Log is a measurement log file.
type Log struct{ Path string }

// Measure extends the TPM with ev and then appends ev to the log. An event
// is logged only once it is in the TPM; if the append fails after the
// extension, the log no longer replays and a verifier refuses it, which is
// the safe failure.
func (l Log) Measure(tpm Extender, ev Event) error {
	if err := tpm.Extend(ev.PCR, []byte(ev.Data)); err != nil {
		return fmt.Errorf("measure %s into PCR %d: %w", ev.Type, ev.PCR, err)
	}
	if err := l.Append(ev); err != nil {
		return fmt.Errorf("measure %s: extended PCR %d but %w", ev.Type, ev.PCR, err)
	}
	return nil
}

// Append adds ev to the log without touching a TPM (for a record of an
// extension made elsewhere).
func (l Log) Append(ev Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o755); err != nil {
		return fmt.Errorf("write measurement log: %w", err)
	}
	f, err := os.OpenFile(l.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("write measurement log: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write measurement log %s: %w", l.Path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write measurement log %s: %w", l.Path, err)
	}
	return nil
}

// Read reads a log file. A missing file is an empty log.
func Read(path string) ([]Event, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read measurement log: %w", err)
	}
	evs, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("measurement log %s: %w", path, err)
	}
	return evs, nil
}

// Parse parses a log's bytes and checks each event's recorded hash.
func Parse(b []byte) ([]Event, error) {
	var evs []Event
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev Event
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if ev.PCR < 0 || ev.PCR > 23 {
			return nil, fmt.Errorf("line %d: PCR %d out of range 0-23", n, ev.PCR)
		}
		if want := NewEvent(ev.PCR, ev.Type, ev.Data).SHA256; ev.SHA256 != want {
			return nil, fmt.Errorf("line %d (%s): recorded sha256 %s is not the hash of its data (%s)", n, ev.Type, ev.SHA256, want)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return evs, nil
}

// Replay computes the sha256-bank value of pcr after evs, starting from
// the PCR's reset value (32 zero bytes), and how many events it used.
func Replay(evs []Event, pcr int) ([]byte, int) {
	v := make([]byte, sha256.Size)
	n := 0
	for _, ev := range evs {
		if ev.PCR != pcr {
			continue
		}
		v = ExtendSHA256(v, []byte(ev.Data))
		n++
	}
	return v, n
}

// ExtendSHA256 is what the TPM's sha256 bank becomes after extending a PCR
// holding v with data: sha256(v || sha256(data)).
func ExtendSHA256(v, data []byte) []byte {
	d := sha256.Sum256(data)
	h := sha256.New()
	h.Write(v)
	h.Write(d[:])
	return h.Sum(nil)
}

// Manifest is what the initrd records about the manifest it verified.
type Manifest struct {
	Digest    string // sha256:<hex> of the signed manifest
	ProductID string
	Version   int64
}

// ManifestEvent is the TypeManifest event for m, in PCR.
func ManifestEvent(m Manifest) Event {
	return NewEvent(PCR, TypeManifest, fmt.Sprintf("manifest=%s product=%s version=%d", m.Digest, m.ProductID, m.Version))
}

// ParseManifest reads a TypeManifest event back.
func ParseManifest(ev Event) (Manifest, error) {
	if ev.Type != TypeManifest {
		return Manifest{}, fmt.Errorf("event type %q is not %s", ev.Type, TypeManifest)
	}
	var m Manifest
	var seen int
	for _, f := range strings.Fields(ev.Data) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Manifest{}, fmt.Errorf("manifest event: field %q has no =", f)
		}
		switch k {
		case "manifest":
			m.Digest = v
		case "product":
			m.ProductID = v
		case "version":
			n, err := strconv.ParseInt(v, 10, 64)
			if err == nil && n < 0 {
				err = errors.New("negative")
			}
			if err != nil {
				return Manifest{}, fmt.Errorf("manifest event: version %q: %w", v, err)
			}
			m.Version = n
		default:
			return Manifest{}, fmt.Errorf("manifest event: unknown field %q", k)
		}
		seen++
	}
	if seen != 3 || !strings.HasPrefix(m.Digest, "sha256:") || m.ProductID == "" {
		return Manifest{}, fmt.Errorf("manifest event %q: want manifest=sha256:… product=… version=N", ev.Data)
	}
	return m, nil
}
