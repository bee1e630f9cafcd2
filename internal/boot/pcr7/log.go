package pcr7

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"

	"github.com/vesselos/vessel/internal/boot/ovmf"
	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/boot/tcglog"
)

// VariableEvent is a decoded UEFI_VARIABLE_DATA.
type VariableEvent struct {
	GUID secureboot.GUID
	Name string
	Data []byte
}

// ParseVariableData decodes a UEFI_VARIABLE_DATA (the data of variable
// events), refusing lengths that do not add up to len(b).
func ParseVariableData(b []byte) (*VariableEvent, error) {
	if len(b) < 32 {
		return nil, fmt.Errorf("variable event data: %d bytes, want at least 32", len(b))
	}
	nameLen := binary.LittleEndian.Uint64(b[16:])
	dataLen := binary.LittleEndian.Uint64(b[24:])
	rest := uint64(len(b) - 32)
	if nameLen > rest/2 || dataLen != rest-2*nameLen {
		return nil, fmt.Errorf("variable event data: name length %d and data length %d do not fit in %d bytes", nameLen, dataLen, rest)
	}
	u := make([]uint16, nameLen)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[32+2*i:])
	}
	v := &VariableEvent{Name: string(utf16.Decode(u)), Data: b[32+2*nameLen:]}
	copy(v.GUID[:], b[:16])
	return v, nil
}

// describe says what an event is in one line.
func describe(typ uint32, data []byte) string {
	switch typ {
	case EvSeparator:
		if bytes.Equal(data, Separator) {
			return "separator"
		}
		return fmt.Sprintf("separator %x (an error value)", data)
	case EvEFIAction:
		return fmt.Sprintf("action %q", string(data))
	case EvEFIVariableDriverConfig, EvEFIVariableAuthority:
	default:
		return fmt.Sprintf("%d bytes of event data", len(data))
	}
	v, err := ParseVariableData(data)
	if err != nil {
		return err.Error()
	}
	name := v.Name
	if typ == EvEFIVariableAuthority {
		if len(v.Data) < 16 {
			return fmt.Sprintf("%s authority: %d bytes", name, len(v.Data))
		}
		owner := secureboot.GUID(v.Data[:16])
		if c, err := x509.ParseCertificate(v.Data[16:]); err == nil {
			return fmt.Sprintf("%s authority %s (owner %s)", name, c.Subject, owner)
		}
		return fmt.Sprintf("%s authority: %d bytes, not a certificate (owner %s)", name, len(v.Data)-16, owner)
	}
	switch {
	case name == "SecureBoot" && len(v.Data) == 1:
		return fmt.Sprintf("SecureBoot = %02x", v.Data[0])
	case len(v.Data) == 0:
		return name + " (absent or empty)"
	}
	lists, err := secureboot.ParseLists(v.Data)
	if err != nil {
		return fmt.Sprintf("%s (%d bytes, not signature lists)", name, len(v.Data))
	}
	n := 0
	var subjects []string
	for _, l := range lists {
		n += len(l.Signatures)
		if l.Type == secureboot.CertX509 {
			for _, s := range l.Signatures {
				if c, err := x509.ParseCertificate(s.Data); err == nil {
					subjects = append(subjects, c.Subject.String())
				}
			}
		}
	}
	d := fmt.Sprintf("%s (%s, %s)", name, plural(len(lists), "signature list"), plural(n, "entry"))
	if len(subjects) > 0 {
		d += ": " + strings.Join(subjects, "; ")
	}
	return d
}

// StoreInputs are the inputs for a machine booting with an OVMF variable
// store: PK, KEK, db, dbx as stored, SecureBoot as the firmware derives it
// (on when PK exists and SecureBootEnable is absent or 1), and the db
// entry of signer (nil: db must hold exactly one certificate).
func StoreInputs(s *ovmf.Store, signer *x509.Certificate) (Inputs, error) {
	var in Inputs
	hasPK, enable := false, true
	for _, v := range s.Active() {
		switch {
		case v.GUID == secureboot.GlobalVariable && (v.Name == secureboot.PK || v.Name == secureboot.KEK),
			v.GUID == secureboot.ImageSecurityDatabase && (v.Name == secureboot.DB || v.Name == "dbx"):
			in.set(v.Name, v.Data)
			if v.Name == secureboot.PK {
				hasPK = true
			}
		case v.GUID == secureboot.SecureBootEnableGUID && v.Name == "SecureBootEnable":
			enable = len(v.Data) == 1 && v.Data[0] == 1
		}
	}
	in.SecureBoot = hasPK && enable
	if !in.SecureBoot {
		return in, nil // no verification, no authority event
	}
	if in.DB == nil {
		return Inputs{}, errors.New("the store enables Secure Boot but has no db: no image can boot")
	}
	if signer == nil {
		lists, err := secureboot.ParseLists(in.DB)
		if err != nil {
			return Inputs{}, fmt.Errorf("db: %w", err)
		}
		var certs []secureboot.Signature
		for _, l := range lists {
			if l.Type == secureboot.CertX509 {
				certs = append(certs, l.Signatures...)
			}
		}
		if len(certs) != 1 {
			return Inputs{}, fmt.Errorf("db holds %d certificates: say which one signed the image", len(certs))
		}
		in.Authority = append(append([]byte(nil), certs[0].Owner[:]...), certs[0].Data...)
		return in, nil
	}
	a, err := FindAuthority(in.DB, signer)
	if err != nil {
		return Inputs{}, err
	}
	in.Authority = a
	return in, nil
}

// LogResult is PCR7 as an event log replays it.
type LogResult struct {
	Result
	// HasAuthority is false when no EV_EFI_VARIABLE_AUTHORITY event was
	// logged: some firmware never measures the db entry that verified the
	// boot image, and a prediction that includes it cannot match.
	HasAuthority bool     `json:"hasAuthorityEvent"`
	Warnings     []string `json:"warnings,omitempty"`
}

// WarnNoAuthority is the warning for a log without an authority event.
const WarnNoAuthority = "the log has no EV_EFI_VARIABLE_AUTHORITY event in PCR7: the firmware did not measure the db certificate that verified the boot image (Secure Boot off, or firmware that never measures it); a prediction that includes it will not match"

// FromLog replays PCR7 from a parsed log and describes its events. Events
// whose SHA-256 digest is not the hash of their data are reported in
// Warnings (firmware may log a digest of something else, e.g. for
// EV_EFI_ACTION); the logged digest is what the replay uses.
func FromLog(l *tcglog.Log) (*LogResult, error) {
	if _, ok := l.DigestSizes[tcglog.AlgSHA256]; !ok {
		return nil, errors.New("event log: no sha256 bank in the Spec ID event")
	}
	r := &LogResult{}
	for i, e := range l.Events {
		if e.PCR != 7 || e.Type == evNoAction {
			continue
		}
		d, ok := e.Digests[tcglog.AlgSHA256]
		if !ok {
			return nil, fmt.Errorf("event log: event %d of PCR 7 has no sha256 digest", i)
		}
		ev := Event{Type: e.Type, TypeName: TypeName(e.Type), Digest: bytes.Clone(d), Data: e.Data, Description: describe(e.Type, e.Data)}
		if e.Type == EvEFIVariableAuthority {
			r.HasAuthority = true
		}
		if sum := sha256.Sum256(e.Data); !bytes.Equal(sum[:], d) && e.Type != EvEFIAction {
			r.Warnings = append(r.Warnings, fmt.Sprintf("event %d (%s, %s): the digest is not the SHA-256 of the event data", len(r.Events), ev.TypeName, ev.Description))
		}
		r.Events = append(r.Events, ev)
	}
	if len(r.Events) == 0 {
		return nil, errors.New("event log: no PCR 7 events")
	}
	if !r.HasAuthority {
		r.Warnings = append([]string{WarnNoAuthority}, r.Warnings...)
	}
	r.PCR7 = extend(r.Events)
	return r, nil
}

// ParseLog parses a TCG2 crypto-agile event log and replays PCR7.
func ParseLog(b []byte) (*LogResult, error) {
	l, err := tcglog.Parse(b)
	if err != nil {
		return nil, err
	}
	return FromLog(l)
}

// Difference is the first event where a prediction and a log part.
type Difference struct {
	Index     int    `json:"index"`               // 0-based position among PCR7 events
	Predicted *Event `json:"predicted,omitempty"` // nil: the log has an extra event
	Logged    *Event `json:"logged,omitempty"`    // nil: the log ends early
	Reason    string `json:"reason"`
}

// Compare returns nil when the events have the same digests in the same
// order, else the first difference and why.
func Compare(pred, logged []Event) *Difference {
	for i := 0; i < len(pred) || i < len(logged); i++ {
		switch {
		case i >= len(logged):
			return &Difference{Index: i, Predicted: &pred[i], Reason: fmt.Sprintf("the log ends before the predicted %s %s", pred[i].TypeName, pred[i].Description)}
		case i >= len(pred):
			return &Difference{Index: i, Logged: &logged[i], Reason: fmt.Sprintf("the log has an extra %s %s", logged[i].TypeName, logged[i].Description)}
		}
		p, l := pred[i], logged[i]
		if p.Type == l.Type && bytes.Equal(p.Digest, l.Digest) {
			continue
		}
		return &Difference{Index: i, Predicted: &pred[i], Logged: &logged[i], Reason: why(p, l)}
	}
	return nil
}

func why(p, l Event) string {
	if p.Type != l.Type {
		return fmt.Sprintf("predicted %s %s, the log has %s %s", p.TypeName, p.Description, l.TypeName, l.Description)
	}
	pv, perr := ParseVariableData(p.Data)
	lv, lerr := ParseVariableData(l.Data)
	if perr != nil || lerr != nil {
		return fmt.Sprintf("%s: predicted %s, the log has %s (digest %s, logged %s)", p.TypeName, p.Description, l.Description, p.Digest, l.Digest)
	}
	switch {
	case pv.Name != lv.Name || pv.GUID != lv.GUID:
		return fmt.Sprintf("%s: predicted variable %s (%s), the log has %s (%s)", p.TypeName, pv.Name, pv.GUID, lv.Name, lv.GUID)
	case !bytes.Equal(pv.Data, lv.Data):
		at := 0
		for at < len(pv.Data) && at < len(lv.Data) && pv.Data[at] == lv.Data[at] {
			at++
		}
		return fmt.Sprintf("%s %s: the data differs from byte %d (predicted %d bytes, logged %d): predicted %s, the log has %s",
			p.TypeName, pv.Name, at, len(pv.Data), len(lv.Data), p.Description, l.Description)
	}
	return fmt.Sprintf("%s %s: same data but the logged digest %s is not its SHA-256 %s", p.TypeName, pv.Name, l.Digest, p.Digest)
}

func plural(n int, s string) string {
	switch {
	case n == 1:
		return "1 " + s
	case strings.HasSuffix(s, "y"):
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(s, "y"))
	}
	return fmt.Sprintf("%d %ss", n, s)
}
