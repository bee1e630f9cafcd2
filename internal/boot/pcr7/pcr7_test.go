package pcr7

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/vesselos/vessel/internal/boot/ovmf"
	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/boot/tcglog"
)

var (
	keysOnce sync.Once
	keysDir  [2]string
	keysErr  error
)

// testKeys returns two key directories made by secureboot.Generate (RSA
// key generation is slow: once per test binary).
func testKeys(t *testing.T) (string, string) {
	t.Helper()
	keysOnce.Do(func() {
		base, err := os.MkdirTemp("", "pcr7-keys-")
		if err != nil {
			keysErr = err
			return
		}
		for i, org := range []string{"pcr7 test", "other"} {
			keysDir[i] = filepath.Join(base, org)
			if _, keysErr = secureboot.Generate(keysDir[i], secureboot.GenerateOptions{Org: org}); keysErr != nil {
				return
			}
		}
	})
	if keysErr != nil {
		t.Fatal(keysErr)
	}
	return keysDir[0], keysDir[1]
}

func TestMain(m *testing.M) {
	code := m.Run()
	if keysDir[0] != "" {
		os.RemoveAll(filepath.Dir(keysDir[0]))
	}
	os.Exit(code)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestVariableData checks the UEFI_VARIABLE_DATA layout byte by byte, and
// the SecureBoot = 01 and separator digests against values computed by
// hand (sha256sum of the bytes written with printf).
func TestVariableData(t *testing.T) {
	got := VariableData(secureboot.GlobalVariable, "SecureBoot", []byte{1})
	want := mustHex("61dfe48bca93d211aa0d00e098032b8c" + // GUID 8be4df61-93ca-11d2-aa0d-00e098032b8c, little-endian fields
		"0a00000000000000" + "0100000000000000" + // 10 characters, 1 byte
		"53006500630075007200650042006f006f007400" + "01") // "SecureBoot" UTF-16LE, data
	if !bytes.Equal(got, want) {
		t.Fatalf("SecureBoot variable data\n got %x\nwant %x", got, want)
	}
	// printf '\x61\xdf...\x01' | sha256sum
	if d := sha256.Sum256(got); hex.EncodeToString(d[:]) != "ccfc4bb32888a345bc8aeadaba552b627d99348c767681ab3141f5b01e40a40e" {
		t.Fatalf("SecureBoot = 01 digest %x", d)
	}
	if d := sha256.Sum256(Separator); hex.EncodeToString(d[:]) != "df3f619804a92fdb4057192dc43dd748ea778adc52bc498ce80524c014b81119" {
		t.Fatalf("separator digest %x", d)
	}
	v, err := ParseVariableData(got)
	if err != nil || v.Name != "SecureBoot" || v.GUID != secureboot.GlobalVariable || !bytes.Equal(v.Data, []byte{1}) {
		t.Fatalf("ParseVariableData = %+v, %v", v, err)
	}
	for _, bad := range [][]byte{got[:31], got[:len(got)-1], append(bytes.Clone(got), 0)} {
		if _, err := ParseVariableData(bad); err == nil {
			t.Fatalf("ParseVariableData accepted %d bytes of a %d-byte structure", len(bad), len(got))
		}
	}
}

// TestPredictOrder checks the events, their order and an absent dbx (no
// data), and that the value is the chained extension of their digests.
func TestPredictOrder(t *testing.T) {
	dir, _ := testKeys(t)
	ks, err := LoadCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	in, err := KeySetInputs(ks, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := Predict(in)
	var names []string
	for _, e := range r.Events {
		names = append(names, e.TypeName+" "+strings.Fields(e.Description)[0])
	}
	want := "EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot,EV_EFI_VARIABLE_DRIVER_CONFIG PK,EV_EFI_VARIABLE_DRIVER_CONFIG KEK," +
		"EV_EFI_VARIABLE_DRIVER_CONFIG db,EV_EFI_VARIABLE_DRIVER_CONFIG dbx,EV_SEPARATOR separator,EV_EFI_VARIABLE_AUTHORITY db"
	if strings.Join(names, ",") != want {
		t.Fatalf("events\n got %s\nwant %s", strings.Join(names, ","), want)
	}
	if r.Events[4].Description != "dbx (absent or empty)" {
		t.Fatalf("dbx event: %q", r.Events[4].Description)
	}
	if v, _ := ParseVariableData(r.Events[4].Data); len(v.Data) != 0 || binary.LittleEndian.Uint64(r.Events[4].Data[24:]) != 0 {
		t.Fatalf("absent dbx measured with data %x", v.Data)
	}
	if !strings.Contains(r.Events[6].Description, "CN=pcr7 test Secure Boot db") {
		t.Fatalf("authority event: %q", r.Events[6].Description)
	}
	pcr := make([]byte, 32)
	for _, e := range r.Events {
		d := sha256.Sum256(e.Data)
		if !bytes.Equal(d[:], e.Digest) {
			t.Fatalf("event %s: digest is not the SHA-256 of its data", e.Description)
		}
		s := sha256.Sum256(append(pcr, d[:]...))
		pcr = s[:]
	}
	if !bytes.Equal(pcr, r.PCR7) {
		t.Fatalf("PCR7 %s, extending by hand gives %x", r.PCR7, pcr)
	}
	// The authority event data is the db entry: owner GUID + certificate.
	v, _ := ParseVariableData(r.Events[6].Data)
	if !bytes.Equal(v.Data, ks.DBSignatureData()) {
		t.Fatal("the authority event does not carry KeySet.DBSignatureData")
	}
}

// TestInputsChangePrediction: a dbx entry, another signer or Secure Boot off
// each change PCR7; a signer not in db is refused.
func TestInputsChangePrediction(t *testing.T) {
	dir, otherDir := testKeys(t)
	ks, _ := LoadCerts(dir)
	other, _ := LoadCerts(otherDir)
	base, err := KeySetInputs(ks, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p0 := Predict(base).PCR7.String()

	dbx, err := secureboot.ParseDBX([]byte(strings.Repeat("ab", 32)+"\n"), ks.Owner)
	if err != nil {
		t.Fatal(err)
	}
	withDBX, err := KeySetInputs(ks, dbx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rd := Predict(withDBX)
	if rd.PCR7.String() == p0 {
		t.Fatal("a dbx entry did not change PCR7")
	}
	if d := Compare(rd.Events, Predict(base).Events); d == nil || d.Index != 4 || !strings.Contains(d.Reason, "dbx") {
		t.Fatalf("first difference with a dbx entry: %+v", d)
	}

	if _, err := KeySetInputs(ks, nil, other.DB.Cert); !errors.Is(err, ErrNotInDB) {
		t.Fatalf("a signer not in db: want ErrNotInDB, got %v", err)
	}
	// db holding both certificates: the signer picks the authority event.
	two, err := secureboot.MarshalLists([]secureboot.SignatureList{
		secureboot.X509List(ks.Owner, ks.DB.Cert), secureboot.X509List(other.Owner, other.DB.Cert)})
	if err != nil {
		t.Fatal(err)
	}
	in := base
	in.DB = two
	var pcrs []string
	for _, signer := range [][]byte{ks.DB.Cert.Raw, other.DB.Cert.Raw} {
		for _, c := range []*secureboot.KeySet{ks, other} {
			if bytes.Equal(c.DB.Cert.Raw, signer) {
				a, err := FindAuthority(two, c.DB.Cert)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(a, c.DBSignatureData()) {
					t.Fatal("FindAuthority did not return the owner GUID and certificate of the entry")
				}
				in.Authority = a
				pcrs = append(pcrs, Predict(in).PCR7.String())
			}
		}
	}
	if len(pcrs) != 2 || pcrs[0] == pcrs[1] {
		t.Fatalf("another signer did not change PCR7: %v", pcrs)
	}

	off := base
	off.SecureBoot = false
	if Predict(off).PCR7.String() == p0 {
		t.Fatal("SecureBoot = 00 did not change PCR7")
	}
}

// TestStoreInputs: a VARS file made by ovmf.Write predicts what the key set
// predicts; SecureBootEnable = 0 turns verification (and the authority
// event) off.
func TestStoreInputs(t *testing.T) {
	tmpl, err := os.ReadFile(ovmf.DefaultTemplate)
	if err != nil {
		t.Skipf("no OVMF template (%v): make deps installs ovmf", err)
	}
	dir, _ := testKeys(t)
	ks, _ := LoadCerts(dir)
	dbx, _ := secureboot.ParseDBX([]byte(strings.Repeat("cd", 32)), ks.Owner)
	for _, x := range [][]byte{nil, dbx} {
		vars, err := ks.Variables(x)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ovmf.Write(tmpl, ovmf.SecureBootVariables(vars))
		if err != nil {
			t.Fatal(err)
		}
		sin, err := StoreInputs(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		kin, _ := KeySetInputs(ks, x, nil)
		if a, b := Predict(sin).PCR7, Predict(kin).PCR7; !bytes.Equal(a, b) {
			t.Fatalf("dbx %d bytes: store predicts %s, keys predict %s", len(x), a, b)
		}
	}
	vars, _ := ks.Variables(nil)
	all := ovmf.SecureBootVariables(vars)
	for i := range all {
		if all[i].Name == "SecureBootEnable" {
			all[i].Data = []byte{0}
		}
	}
	s, err := ovmf.Write(tmpl, all)
	if err != nil {
		t.Fatal(err)
	}
	sin, err := StoreInputs(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := Predict(sin)
	if sin.SecureBoot || sin.Authority != nil || len(r.Events) != 6 || r.Events[0].Description != "SecureBoot = 00" {
		t.Fatalf("SecureBootEnable = 0: SecureBoot %v, %d events, first %q", sin.SecureBoot, len(r.Events), r.Events[0].Description)
	}
}

// logOf makes a crypto-agile log with the events in PCR7 and a PCR0 event.
func logOf(evs []Event) []byte {
	l := &tcglog.Log{DigestSizes: map[uint16]int{tcglog.AlgSHA256: 32}}
	l.Events = append(l.Events, tcglog.Event{PCR: 0, Type: 8, Data: []byte("crtm"), Digests: map[uint16][]byte{tcglog.AlgSHA256: make([]byte, 32)}})
	for _, e := range evs {
		l.Events = append(l.Events, tcglog.Event{PCR: 7, Type: e.Type, Data: e.Data, Digests: map[uint16][]byte{tcglog.AlgSHA256: e.Digest}})
	}
	return l.Marshal()
}

// TestLogWithoutAuthority: firmware that does not measure the db authority
// gives a log that replays to another value; it is reported.
func TestLogWithoutAuthority(t *testing.T) {
	dir, _ := testKeys(t)
	ks, _ := LoadCerts(dir)
	in, _ := KeySetInputs(ks, nil, nil)
	pred := Predict(in)
	full, err := ParseLog(logOf(pred.Events))
	if err != nil {
		t.Fatal(err)
	}
	if !full.HasAuthority || len(full.Warnings) != 0 || !bytes.Equal(full.PCR7, pred.PCR7) || Compare(pred.Events, full.Events) != nil {
		t.Fatalf("the complete log: authority %v, warnings %v, PCR7 %s (predicted %s)", full.HasAuthority, full.Warnings, full.PCR7, pred.PCR7)
	}
	short, err := ParseLog(logOf(pred.Events[:6]))
	if err != nil {
		t.Fatal(err)
	}
	if short.HasAuthority || len(short.Warnings) == 0 || short.Warnings[0] != WarnNoAuthority {
		t.Fatalf("a log without the authority event: authority %v, warnings %v", short.HasAuthority, short.Warnings)
	}
	d := Compare(pred.Events, short.Events)
	if d == nil || d.Index != 6 || d.Logged != nil || !strings.Contains(d.Reason, "the log ends before the predicted EV_EFI_VARIABLE_AUTHORITY") {
		t.Fatalf("difference: %+v", d)
	}
}

// TestBadLogs: truncated and garbage logs are clear errors.
func TestBadLogs(t *testing.T) {
	dir, _ := testKeys(t)
	ks, _ := LoadCerts(dir)
	in, _ := KeySetInputs(ks, nil, nil)
	good := logOf(Predict(in).Events)
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"truncated": {good[:len(good)-10], "event log: event 7: truncated"},
		"garbage":   {bytes.Repeat([]byte("garbage!"), 20), "not a crypto-agile (TPM 2.0) log"},
		"empty":     {nil, "event log: header"},
		"no pcr7":   {logOf(nil), "no PCR 7 events"},
	} {
		_, err := ParseLog(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want an error with %q, got %v", name, c.want, err)
		}
	}
}

// TestRun exercises the file inputs and the comparison.
func TestRun(t *testing.T) {
	dir, otherDir := testKeys(t)
	tmp := t.TempDir()
	ks, _ := LoadCerts(dir)
	in, _ := KeySetInputs(ks, nil, nil)
	pred := Predict(in)
	logFile := filepath.Join(tmp, "log")
	if err := os.WriteFile(logFile, logOf(pred.Events), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Run(Options{Keys: dir, EventLog: logFile})
	if err != nil || r.Match == nil || !*r.Match || r.Source != "keys" || !bytes.Equal(r.PCR7, pred.PCR7) {
		t.Fatalf("Run keys+log: %+v, %v", r, err)
	}
	r, err = Run(Options{EventLog: logFile})
	if err != nil || r.Source != "eventlog" || !bytes.Equal(r.PCR7, pred.PCR7) || r.Match != nil {
		t.Fatalf("Run log: %+v, %v", r, err)
	}
	dbxFile := filepath.Join(tmp, "dbx.txt")
	os.WriteFile(dbxFile, []byte("# revoked\n"+strings.Repeat("0f", 32)+"\n"), 0o644)
	r, err = Run(Options{Keys: dir, DBX: dbxFile, EventLog: logFile})
	if err != nil || *r.Match || r.Difference.Index != 4 || bytes.Equal(r.PCR7, pred.PCR7) {
		t.Fatalf("Run with a dbx the log lacks: %+v, %v", r, err)
	}
	for name, c := range map[string]struct {
		o    Options
		want string
	}{
		"nothing":        {Options{}, "nothing to read"},
		"both":           {Options{Keys: dir, Vars: "x"}, "not both"},
		"dbx alone":      {Options{EventLog: logFile, DBX: dbxFile}, "only changes a prediction"},
		"no keys":        {Options{Keys: tmp}, "read Secure Boot keys from"},
		"signer not db":  {Options{Keys: dir, Signer: filepath.Join(otherDir, "db.crt")}, "not in db"},
		"bad dbx":        {Options{Keys: dir, DBX: logFile}, "read dbx"},
		"vars not store": {Options{Vars: logFile}, "not an OVMF variable store"},
	} {
		if _, err := Run(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want an error with %q, got %v", name, c.want, err)
		}
	}
}

func FuzzParseLog(f *testing.F) {
	if b, err := os.ReadFile("testdata/ovmf/binary_bios_measurements"); err == nil {
		f.Add(b)
	}
	f.Add(logOf([]Event{newEvent(EvSeparator, Separator)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseLog(b)
		if err != nil {
			return
		}
		if len(r.PCR7) != 32 || len(r.Events) == 0 {
			t.Fatalf("a parsed log gave PCR7 %x from %d events", r.PCR7, len(r.Events))
		}
		for _, e := range r.Events {
			_, _ = ParseVariableData(e.Data)
		}
	})
}

// TestKnownAnswer: testdata/ovmf* are captures from Secure Boot VM boots
// (OVMF 2022.11, swtpm; internal/vmtest TestPCR7Prediction with
// VESSEL_PCR7_TESTDATA): the guest's event log, the PCR7 its TPM reported,
// and the public half of the keys that booted it (plus dbx.txt when a dbx
// was enrolled). The prediction from the certificates, the replay of the
// log and the TPM's value must all agree, event by event.
func TestKnownAnswer(t *testing.T) {
	dirs, _ := filepath.Glob("testdata/ovmf*")
	if len(dirs) == 0 {
		t.Fatal("no captures in testdata")
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(dir, "pcr7.txt"))
			if err != nil {
				t.Fatal(err)
			}
			o := Options{Keys: dir, EventLog: filepath.Join(dir, "binary_bios_measurements")}
			if _, err := os.Stat(filepath.Join(dir, "dbx.txt")); err == nil {
				o.DBX = filepath.Join(dir, "dbx.txt")
			}
			r, err := Run(o)
			if err != nil {
				t.Fatal(err)
			}
			tpm := strings.TrimSpace(string(want))
			if r.Log.PCR7.String() != tpm {
				t.Fatalf("the replay of the log %s is not the TPM's PCR7 %s", r.Log.PCR7, tpm)
			}
			if r.Difference != nil {
				t.Fatalf("first difference at event %d: %s", r.Difference.Index, r.Difference.Reason)
			}
			if r.Prediction.PCR7.String() != tpm || !*r.Match {
				t.Fatalf("predicted %s, the TPM had %s", r.Prediction.PCR7, tpm)
			}
			if !r.Log.HasAuthority || len(r.Log.Warnings) != 0 {
				t.Fatalf("authority event %v, warnings %v", r.Log.HasAuthority, r.Log.Warnings)
			}
			// Without the dbx the machine had, or with another signer,
			// the prediction must not match this log.
			if o.DBX != "" {
				o2 := o
				o2.DBX = ""
				if r2, err := Run(o2); err != nil || r2.Difference == nil || r2.Difference.Index != 4 {
					t.Fatalf("prediction without the dbx: %+v, %v", r2, err)
				}
			}
			// The same log truncated in its last event is an error naming it.
			b, _ := os.ReadFile(o.EventLog)
			if _, err := ParseLog(b[:len(b)-1]); err == nil || !strings.Contains(err.Error(), "truncated") {
				t.Fatalf("a truncated real log: %v", err)
			}
		})
	}
}

// TestReplayMatchesTPM2Tools: tpm2-tools' tpm2_eventlog, an independent
// parser, replays the captured logs to the same sha256 PCR7.
func TestReplayMatchesTPM2Tools(t *testing.T) {
	tool, err := exec.LookPath("tpm2_eventlog")
	if err != nil {
		t.Skip("tpm2_eventlog is not installed (make deps installs tpm2-tools)")
	}
	dirs, _ := filepath.Glob("testdata/ovmf*")
	for _, dir := range dirs {
		log := filepath.Join(dir, "binary_bios_measurements")
		out, err := exec.Command(tool, log).Output()
		if err != nil {
			t.Fatalf("tpm2_eventlog %s: %v", log, err)
		}
		_, pcrs, ok := strings.Cut(string(out), "\npcrs:\n")
		_, sha256Bank, ok2 := strings.Cut(pcrs, "  sha256:\n")
		m := regexp.MustCompile(`(?m)^\s+7\s+: 0x([0-9a-fA-F]{64})$`).FindStringSubmatch(sha256Bank)
		if !ok || !ok2 || m == nil {
			t.Fatalf("tpm2_eventlog %s: no sha256 PCR 7 in its output:\n%s", log, pcrs)
		}
		b, _ := os.ReadFile(log)
		r, err := ParseLog(b)
		if err != nil {
			t.Fatal(err)
		}
		if r.PCR7.String() != strings.ToLower(m[1]) {
			t.Fatalf("%s: replay %s, tpm2_eventlog %s", dir, r.PCR7, m[1])
		}
	}
}
