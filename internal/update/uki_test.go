package update

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/boot/efivar"
	bootinitrd "github.com/vesselos/vessel/internal/boot/initrd"
	"github.com/vesselos/vessel/internal/boot/secureboot"
	"github.com/vesselos/vessel/internal/boot/uki"
	"github.com/vesselos/vessel/internal/trust"
)

// ukiKit makes signed UKIs (the systemd stub as the kernel: any EFI image
// is a valid .linux) and a machine's firmware: an ESP directory with the
// installed UKI and a variable store whose db holds the signing
// certificate, with the firmware's own disk entry first in BootOrder.
type ukiKit struct {
	ks, other *secureboot.KeySet
	stub      []byte
	caPEM     []byte
	fw        *Firmware
	diskEntry uint16
}

func newUKIKit(t *testing.T, f *fixture) *ukiKit {
	t.Helper()
	stub, err := os.ReadFile(uki.DefaultStub)
	if err != nil {
		t.Skipf("systemd-boot stub missing (apt-get install systemd-boot-efi): %v", err)
	}
	k := &ukiKit{stub: stub}
	for _, ks := range []**secureboot.KeySet{&k.ks, &k.other} {
		dir := t.TempDir()
		if _, err := secureboot.Generate(dir, secureboot.GenerateOptions{Org: "UKI"}); err != nil {
			t.Fatal(err)
		}
		if *ks, err = secureboot.Load(dir); err != nil {
			t.Fatal(err)
		}
	}
	k.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.p.CAs[0].Raw})
	vars := efivar.OpenDir(t.TempDir())
	db, err := secureboot.X509List(secureboot.GlobalVariable, k.ks.DB.Cert).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := vars.Set(secureboot.DB, secureboot.ImageSecurityDatabase, 0x27, db); err != nil {
		t.Fatal(err)
	}
	if k.diskEntry, err = vars.AddEntry(&efivar.LoadOption{Attributes: 1, Description: "UEFI QEMU HARDDISK", FilePath: []byte{0x7f, 0xff, 4, 0}}); err != nil {
		t.Fatal(err)
	}
	vars.SetBootOrder([]uint16{k.diskEntry})
	esp := t.TempDir()
	os.MkdirAll(filepath.Join(esp, "EFI", "BOOT"), 0o755)
	os.WriteFile(filepath.Join(esp, InstalledUKI), k.make(t, testPID, "installed", k.ks), 0o644)
	k.fw = &Firmware{ESP: esp, Vars: vars, Partition: efivar.Partition{Number: 1, Start: 2048, Size: 524288, GUID: secureboot.MustGUID("5c3a6f2e-1b7d-4e8a-9f10-2b3c4d5e6f70")}}
	return k
}

// make builds a UKI for product whose command line carries mark, signed
// with ks's db key.
func (k *ukiKit) make(t *testing.T, product, mark string, ks *secureboot.KeySet) []byte {
	t.Helper()
	plan := &bootinitrd.Plan{Compress: bootinitrd.CompressNone, Entries: []bootinitrd.Entry{
		{Name: "etc", Mode: 0o40755}, {Name: "etc/vessel", Mode: 0o40755},
		{Name: uki.InitrdManifestCAPath, Mode: 0o100644, Data: k.caPEM},
		{Name: uki.InitrdProductIDPath, Mode: 0o100644, Data: []byte(product + "\n")},
		{Name: "init", Mode: 0o100755, Data: []byte("#!/init\n")},
	}}
	var initrd bytes.Buffer
	if err := plan.Write(&initrd); err != nil {
		t.Fatal(err)
	}
	img, err := uki.Build(uki.Options{Stub: k.stub, Kernel: k.stub, Initrd: initrd.Bytes(), Cmdline: "console=ttyS0 vessel.uki=" + mark})
	if err != nil {
		t.Fatal(err)
	}
	signed, err := uki.Sign(img, ks.DB.Signer, ks.DB.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func (k *ukiKit) bootNext(t *testing.T) string {
	t.Helper()
	n, ok, err := k.fw.Vars.BootNext()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return ""
	}
	return efivar.EntryName(n)
}

func (k *ukiKit) bootOrder(t *testing.T) []string {
	t.Helper()
	order, err := k.fw.Vars.BootOrder()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range order {
		out = append(out, efivar.EntryName(n))
	}
	return out
}

func (k *ukiKit) espFiles(t *testing.T) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(k.fw.ESP, UKIDir))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// A staged UKI is written to the ESP under its hash, with its own boot
// entry pointing at that file on the ESP's partition, and armed as
// BootNext; the installed UKI gets an entry for the default slot. The
// initrd runs the trial only when the trial's UKI is what booted; a
// confirm puts it first in BootOrder.
func TestStageUKI(t *testing.T) {
	f := newFixture(t)
	k := newUKIKit(t, f)
	root := f.machine.Root()
	img := k.make(t, testPID, "b", k.ks)
	opts := f.fromHere
	opts.UKI, opts.Firmware = img, k.fw
	res, err := Stage(context.Background(), f.machine, f.signed[2], opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.UKI == nil || res.BootNext == "" || res.BootNext != res.UKI.Entry {
		t.Fatalf("staged UKI %+v, BootNext %q", res.UKI, res.BootNext)
	}
	on, err := os.ReadFile(filepath.Join(k.fw.ESP, res.UKI.File))
	if err != nil || !bytes.Equal(on, img) || !strings.HasPrefix(res.UKI.File, UKIDir+"/") {
		t.Fatalf("the UKI on the ESP (%s): %v", res.UKI.File, err)
	}
	if files := k.espFiles(t); len(files) != 1 {
		t.Fatalf("ESP holds %v (a .tmp left behind?)", files)
	}
	n, _ := efivar.ParseEntryName(res.UKI.Entry)
	e, err := k.fw.Vars.Entry(n)
	if err != nil {
		t.Fatal(err)
	}
	want := `HD(1,GPT,5c3a6f2e-1b7d-4e8a-9f10-2b3c4d5e6f70)/\` + strings.ReplaceAll(res.UKI.File, "/", `\`)
	if got := efivar.DescribePath(e.FilePath); got != want || e.Description != "vessel version 2" || e.Attributes&efivar.LoadOptionActive == 0 {
		t.Fatalf("boot entry %s: %s %q, want %s", res.UKI.Entry, got, e.Description, want)
	}
	if got := k.bootNext(t); got != res.UKI.Entry {
		t.Fatalf("BootNext %q, want %s", got, res.UKI.Entry)
	}
	s := readState(t, root)
	def := s.Slots[s.Default].UKI
	if def == nil || def.File != InstalledUKI || def.Entry == res.UKI.Entry {
		t.Fatalf("the default slot's UKI: %+v", def)
	}
	if u := s.TrialUKI(); u == nil || *u != *res.UKI {
		t.Fatalf("TrialUKI %+v", u)
	}
	if st, err := GetStatus(root, SlotA); err != nil || st.NextBoot != SlotB || !st.NextTrial {
		t.Fatalf("status: %+v %v", st, err)
	}

	// the firmware spent BootNext elsewhere (or the new kernel died
	// before the initrd): the trial fails, the default boots
	probe := s.clone()
	if slot, trial, changed := probe.Boot(testNow, def.Entry); slot != SlotA || trial || !changed || probe.Last == nil || !strings.Contains(probe.Last.Why, "never reached the initrd") {
		t.Fatalf("boot through the default's UKI: %s %v %v %+v", slot, trial, changed, probe.Last)
	}
	probe = s.clone()
	if slot, trial, _ := probe.Boot(testNow, ""); slot != SlotA || trial {
		t.Fatalf("boot with BootCurrent unknown: %s %v", slot, trial)
	}
	// the trial's UKI booted: the try is taken
	var booted string
	if _, err := Modify(root, func(s *State) error {
		var trial bool
		booted, trial, _ = s.Boot(testNow, res.UKI.Entry)
		if !trial {
			return errors.New("not a trial")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	vm, err := trust.Verify(f.signed[2], trust.Options{CAs: f.p.CAs, ProductID: testPID, Images: f.machine})
	if err != nil {
		t.Fatal(err)
	}
	if err := Confirm(f.machine, vm, booted, nil, k.fw); err != nil {
		t.Fatal(err)
	}
	if order := k.bootOrder(t); len(order) < 2 || order[0] != res.UKI.Entry || order[1] != efivar.EntryName(k.diskEntry) {
		t.Fatalf("BootOrder after confirm: %v", order)
	}
	// not a trial and booted by the right UKI: nothing to repair
	if slot, trial, changed := readState(t, root).Boot(testNow, res.UKI.Entry); slot != SlotB || trial || changed {
		t.Fatalf("after confirm: %s %v %v", slot, trial, changed)
	}

	// a manifest-only update boots the default's UKI: no BootNext
	res3, err := Stage(context.Background(), f.machine, f.signed[3], StageOptions{Trust: f.fromHere.Trust, Client: f.fromHere.Client, From: f.fromHere.From, Firmware: k.fw})
	if err != nil {
		t.Fatal(err)
	}
	if res3.UKI == nil || *res3.UKI != *res.UKI || res3.BootNext != "" || k.bootNext(t) != "" || readState(t, root).TrialUKI() != nil {
		t.Fatalf("manifest-only stage: UKI %+v, BootNext %q / %q", res3.UKI, res3.BootNext, k.bootNext(t))
	}
	if files := k.espFiles(t); len(files) != 1 {
		t.Fatalf("ESP after a manifest-only stage: %v", files)
	}
	// staging version 3 again with UKI c replaces the trial; then with UKI
	// d: c is referenced by no slot any more and goes, with its entry
	opts3 := f.fromHere
	opts3.Firmware = k.fw
	opts3.UKI = k.make(t, testPID, "c", k.ks)
	rc, err := Stage(context.Background(), f.machine, f.signed[3], opts3)
	if err != nil {
		t.Fatal(err)
	}
	opts3.UKI = k.make(t, testPID, "d", k.ks)
	rd, err := Stage(context.Background(), f.machine, f.signed[3], opts3)
	if err != nil {
		t.Fatal(err)
	}
	if len(rd.RemovedUKIs) != 1 || rd.RemovedUKIs[0] != rc.UKI.File {
		t.Fatalf("removed %v, want %s", rd.RemovedUKIs, rc.UKI.File)
	}
	cn, _ := efivar.ParseEntryName(rc.UKI.Entry)
	if _, err := k.fw.Vars.Entry(cn); !errors.Is(err, os.ErrNotExist) && rc.UKI.Entry != rd.UKI.Entry {
		t.Fatalf("the entry of the removed UKI %s: %v", rc.UKI.Entry, err)
	}
	if _, err := os.Stat(filepath.Join(k.fw.ESP, InstalledUKI)); err != nil {
		t.Fatalf("the installed UKI went: %v", err)
	}
	if got := k.bootNext(t); got != rd.UKI.Entry {
		t.Fatalf("BootNext %q, want %s", got, rd.UKI.Entry)
	}
	// rollback disarms the trial and its BootNext
	if _, err := Rollback(root, SlotB, k.fw); err != nil {
		t.Fatal(err)
	}
	if got := k.bootNext(t); got != "" {
		t.Fatalf("BootNext after rollback: %q", got)
	}
	if order := k.bootOrder(t); order[0] != res.UKI.Entry {
		t.Fatalf("BootOrder after rollback: %v", order)
	}
}

// A UKI the firmware would refuse or that boots another product, or one
// staged without firmware, is refused before anything is written: the
// slot record, the ESP and the variables stay as they were.
func TestStageUKIRefused(t *testing.T) {
	f := newFixture(t)
	k := newUKIKit(t, f)
	root := f.machine.Root()
	garbage := []byte("MZ not a UKI")
	for name, c := range map[string]struct {
		img  []byte
		fw   *Firmware
		want string
	}{
		"not in db":       {k.make(t, testPID, "x", k.other), k.fw, "not a certificate in this machine's db"},
		"other product":   {k.make(t, otherPID, "x", k.ks), k.fw, "boots product \"" + otherPID},
		"not a UKI":       {garbage, k.fw, "UKI"},
		"tampered":        {tamper(k.make(t, testPID, "x", k.ks)), k.fw, "not validly signed"},
		"without the ESP": {k.make(t, testPID, "x", k.ks), nil, "needs the ESP"},
	} {
		t.Run(name, func(t *testing.T) {
			before := slotsBytes(t, root)
			order := k.bootOrder(t)
			opts := f.fromHere
			opts.UKI, opts.Firmware = c.img, c.fw
			_, err := Stage(context.Background(), f.machine, f.signed[2], opts)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "the slots are unchanged") {
				t.Fatalf("got %v, want a refusal naming %q", err, c.want)
			}
			if !bytes.Equal(before, slotsBytes(t, root)) {
				t.Fatal("the slot record changed")
			}
			if files := k.espFiles(t); len(files) != 0 {
				t.Fatalf("the ESP holds %v", files)
			}
			if k.bootNext(t) != "" || strings.Join(k.bootOrder(t), ",") != strings.Join(order, ",") {
				t.Fatal("the boot variables changed")
			}
		})
	}
}

// tamper flips a byte of the command line (inside the signed image).
func tamper(img []byte) []byte {
	out := append([]byte(nil), img...)
	i := bytes.Index(out, []byte("vessel.uki=x"))
	out[i] ^= 0x20
	return out
}
