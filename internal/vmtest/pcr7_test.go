package vmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/vesselos/vessel/internal/boot/ovmf"
	"github.com/vesselos/vessel/internal/boot/pcr7"
	"github.com/vesselos/vessel/internal/boot/secureboot"
)

// TestPCR7Prediction boots, once, a UKI signed with a db key that vessel
// boot vars enrolled, with a tiny /init (testdata/logdump) that prints the
// guest's PCR7 and its firmware event log. The guest's PCR7 must equal the
// offline prediction from the key directory (library and `vessel tpm pcr7
// predict --keys`), the prediction from the VARS file (--vars), and the
// replay of the guest's log (--eventlog), event by event.
//
// VESSEL_PCR7_DBX=FILE enrolls a dbx (as vessel boot vars --dbx) and
// predicts with it. VESSEL_PCR7_TESTDATA=DIR saves the log, the certificates, the owner GUID
// and PCR7 there (internal/boot/pcr7/testdata is such a capture).
func TestPCR7Prediction(t *testing.T) {
	if m := Missing(Config{}); m != "" {
		t.Skip(m)
	}
	if _, err := os.Stat(OVMFVars); err != nil {
		t.Skipf("missing %s (make deps installs ovmf)", OVMFVars)
	}
	if _, err := os.Stat(Stub); err != nil {
		t.Skipf("missing the systemd EFI stub %s (make deps installs systemd-boot-efi)", Stub)
	}
	kernel, _, ok := Kernel()
	if !ok {
		t.Skip("no /boot/vmlinuz-* with its /lib/modules tree (make deps installs linux-image-amd64)")
	}
	dir := t.TempDir()
	vessel := filepath.Join(dir, "vessel")
	logdump := filepath.Join(dir, "logdump")
	for _, b := range [][2]string{{vessel, "github.com/vesselos/vessel/cmd/vessel"}, {logdump, "./testdata/logdump"}} {
		build := exec.Command("go", "build", "-trimpath", "-o", b[0], b[1])
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b[1], err, out)
		}
	}
	keys := filepath.Join(dir, "sb")
	run(t, vessel, "keys", "uefi", keys, "--org", "vmtest pcr7")
	vars := filepath.Join(dir, "VARS.fd")
	dbx := os.Getenv("VESSEL_PCR7_DBX")
	if dbx != "" {
		run(t, vessel, "boot", "vars", "--keys", keys, "--dbx", dbx, "-o", vars)
	} else {
		run(t, vessel, "boot", "vars", "--keys", keys, "-o", vars)
	}
	initrd := filepath.Join(dir, "initrd.img")
	writeLogdumpInitrd(t, logdump, initrd)
	uki := filepath.Join(dir, "kernel.efi")
	run(t, vessel, "boot", "uki", "--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0 quiet",
		"--key", filepath.Join(keys, "db.key"), "--cert", filepath.Join(keys, "db.crt"), "-o", uki)

	vm := StartT(t, Config{ESPDir: esp(t, uki), Vars: vars, TPM: true})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := vm.Wait(ctx, "logdump: end ", "logdump: error "); err != nil {
		t.Fatal(err)
	}
	if err := vm.WaitExit(ctx); err != nil {
		t.Fatalf("the guest did not power off cleanly: %v", err)
	}
	guestPCR, log := parseLogdump(t, vm.Lines())
	t.Logf("guest PCR7 (TPM) = %s, event log %d bytes", guestPCR, len(log))
	logFile := filepath.Join(dir, "binary_bios_measurements")
	if err := os.WriteFile(logFile, log, 0o644); err != nil {
		t.Fatal(err)
	}
	if d := os.Getenv("VESSEL_PCR7_TESTDATA"); d != "" {
		saveCapture(t, d, keys, log, guestPCR)
	}

	// The replay of the guest's log.
	replay, err := pcr7.ParseLog(log)
	if err != nil {
		t.Fatal(err)
	}
	if replay.PCR7.String() != guestPCR {
		t.Fatalf("PCR7 %s differs from the replay of the guest's log %s", guestPCR, replay.PCR7)
	}
	if !replay.HasAuthority {
		t.Fatalf("the guest's log has no db authority event: %v", replay.Warnings)
	}
	// The prediction from the keys and from the VARS file.
	ks, err := secureboot.Load(keys)
	if err != nil {
		t.Fatal(err)
	}
	var dbxData []byte
	if dbx != "" {
		b, err := os.ReadFile(dbx)
		if err != nil {
			t.Fatal(err)
		}
		if dbxData, err = secureboot.ParseDBX(b, ks.Owner); err != nil {
			t.Fatal(err)
		}
	}
	in, err := pcr7.KeySetInputs(ks, dbxData, nil)
	if err != nil {
		t.Fatal(err)
	}
	pred := pcr7.Predict(in)
	if d := pcr7.Compare(pred.Events, replay.Events); d != nil {
		t.Fatalf("prediction from the keys differs from the guest's log at event %d: %s", d.Index, d.Reason)
	}
	if pred.PCR7.String() != guestPCR {
		t.Fatalf("predicted PCR7 %s, the guest has %s", pred.PCR7, guestPCR)
	}
	vb, err := os.ReadFile(vars)
	if err != nil {
		t.Fatal(err)
	}
	store, err := ovmf.Parse(vb)
	if err != nil {
		t.Fatal(err)
	}
	sin, err := pcr7.StoreInputs(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := pcr7.Predict(sin).PCR7.String(); got != guestPCR {
		t.Fatalf("predicted PCR7 from %s: %s, the guest has %s", vars, got, guestPCR)
	}
	checkPredictCLI(t, vessel, keys, dbx, vars, logFile, guestPCR)
	t.Logf("guest PCR7 %s = prediction from the keys = from VARS = replay of the guest's log (%d events)", guestPCR, len(replay.Events))
}

// checkPredictCLI runs `vessel tpm pcr7 predict` in each input mode.
func checkPredictCLI(t *testing.T, vessel, keys, dbx, vars, logFile, want string) {
	k := []string{"--keys", keys}
	if dbx != "" {
		k = append(k, "--dbx", dbx)
	}
	for _, args := range [][]string{k, {"--vars", vars}, {"--eventlog", logFile}, append(k, "--eventlog", logFile, "--explain")} {
		out := strings.TrimSpace(run(t, vessel, append([]string{"tpm", "pcr7", "predict"}, args...)...))
		if !strings.Contains(out, want) {
			t.Fatalf("vessel tpm pcr7 predict %s: want %s in the output, got:\n%s", strings.Join(args, " "), want, out)
		}
	}
}

// writeLogdumpInitrd writes a newc initrd holding /dev/console and the
// logdump binary as /init.
func writeLogdumpInitrd(t *testing.T, bin, out string) {
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for i, r := range []cpio.Record{
		{Info: cpio.Info{Ino: 1, Mode: cpio.S_IFDIR | 0o755, NLink: 2, Name: "dev"}},
		{Info: cpio.Info{Ino: 2, Mode: cpio.S_IFCHR | 0o600, NLink: 1, Rmajor: 5, Rminor: 1, Name: "dev/console"}},
		cpio.StaticRecord(b, cpio.Info{Ino: 3, Mode: cpio.S_IFREG | 0o755, NLink: 1, Name: "init"}),
	} {
		if err := w.WriteRecord(r); err != nil {
			t.Fatalf("initrd record %d: %v", i, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// parseLogdump reassembles logdump's output and checks its length and hash.
func parseLogdump(t *testing.T, lines []Line) (string, []byte) {
	var pcr, b64 string
	var size int
	var sum string
	for _, l := range lines {
		i := strings.Index(l.Text, "logdump: ")
		if i < 0 {
			continue
		}
		f := strings.Fields(l.Text[i+len("logdump: "):])
		switch {
		case len(f) == 2 && f[0] == "pcr7":
			pcr = f[1]
		case len(f) == 2 && f[0] == "log":
			b64 += f[1]
		case len(f) == 3 && f[0] == "end":
			size, _ = strconv.Atoi(f[1])
			sum = f[2]
		case f[0] == "error":
			t.Fatalf("the guest could not dump its PCR7 and log: %s", l.Text)
		}
	}
	log, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("the event log from the console does not decode: %v", err)
	}
	if h := sha256.Sum256(log); len(log) != size || hex.EncodeToString(h[:]) != sum {
		t.Fatalf("the event log from the console is %d bytes (sha256 %x), the guest sent %d bytes (%s)", len(log), h, size, sum)
	}
	if len(pcr) != 64 {
		t.Fatalf("no PCR7 from the guest (got %q)", pcr)
	}
	return pcr, log
}

func saveCapture(t *testing.T, dir, keys string, log []byte, pcr string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"binary_bios_measurements": log, "pcr7.txt": []byte(pcr + "\n")}
	if dbx := os.Getenv("VESSEL_PCR7_DBX"); dbx != "" {
		b, err := os.ReadFile(dbx)
		if err != nil {
			t.Fatal(err)
		}
		files["dbx.txt"] = b
	}
	for _, f := range []string{"PK.crt", "KEK.crt", "db.crt", secureboot.OwnerFile} {
		b, err := os.ReadFile(filepath.Join(keys, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("saved the capture in %s", dir)
}
