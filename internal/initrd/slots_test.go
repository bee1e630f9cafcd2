package initrd

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/image/imagetest"
	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/trust/trusttest"
	"github.com/vesselos/vessel/internal/update"
)

// The initrd's choice of manifest from the slot record: an armed trial is
// booted once, its try taken durably (the partition made writable only
// for that); the boot after an unconfirmed trial runs the default and
// records why; a trial whose image is gone is refused here and the
// default boots in the same boot; without a record current.json boots
// as slot a.
func TestChooseBoot(t *testing.T) {
	const pid = "0f8fad5b-d9cb-469f-a165-70867728950e"
	build, _ := store.Open(t.TempDir())
	mk := func(ref, content string) ocispec.Descriptor {
		return imagetest.Squashfs(t, build, ref, map[string]string{"f": content}) // skips unless root with mksquashfs
	}
	host := mk("host:1", "host")
	keys := trusttest.New(t, "Test", map[string]string{"acme": pid})
	sign := func(v int64, web ocispec.Descriptor) []byte {
		im := func(d ocispec.Descriptor) manifest.Image {
			return manifest.Image{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
		}
		h := im(host)
		m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pid, Version: v, Hostfs: &h,
			Services: []manifest.Service{{Name: "web", Image: im(web), Restart: "always", Network: "host"}}}
		return keys.Sign(t, "acme", m)
	}
	web1, web2, web3 := mk("web:1", "one"), mk("web:2", "two"), mk("web:3", "three")
	c, _ := registry.New(registry.Options{})
	data, _ := store.Open(t.TempDir())
	dir := data.Root()
	// version 1 installed as vessel boot disk leaves it
	for _, d := range []ocispec.Descriptor{host, web1} {
		if _, err := c.Copy(context.Background(), registry.Store(build, d.Digest.String()), registry.Store(data, "")); err != nil {
			t.Fatal(err)
		}
	}
	s1 := sign(1, web1)
	if err := registry.RecordCurrent(dir, &registry.Current{Product: pid, Version: 1, Digest: digest.FromBytes(mustPayload(t, s1))}, s1); err != nil {
		t.Fatal(err)
	}
	var rws []bool
	rw := func(w bool) error { rws = append(rws, w); return nil }
	choose := func() *Chosen {
		t.Helper()
		ch, err := ChooseBoot(dir, keys.CAs, pid, time.Time{}, "", rw)
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	if ch := choose(); ch.Slot != update.SlotA || ch.Trial || ch.VM.Version() != 1 || len(rws) != 0 {
		t.Fatalf("no record: slot %s trial %v version %d, rw %v", ch.Slot, ch.Trial, ch.VM.Version(), rws)
	}
	opts := update.StageOptions{Trust: trust.Options{CAs: keys.CAs, ProductID: pid}, Client: c,
		From: func(d digest.Digest) registry.Endpoint { return registry.Store(build, d.String()) }}
	if _, err := update.Stage(context.Background(), data, sign(2, web2), opts); err != nil {
		t.Fatal(err)
	}
	ch := choose()
	if ch.Slot != update.SlotB || !ch.Trial || ch.VM.Version() != 2 || len(rws) != 2 || !rws[0] || rws[1] {
		t.Fatalf("trial: slot %s trial %v version %d, rw %v", ch.Slot, ch.Trial, ch.VM.Version(), rws)
	}
	if s, _, _ := update.Read(dir); s.Trial == nil || s.Trial.TriesLeft != 0 || !s.Trial.Booting {
		t.Fatalf("the try was not taken on disk: %+v", s.Trial)
	}
	// that boot never confirmed
	ch = choose()
	if ch.Slot != update.SlotA || ch.Trial || ch.VM.Version() != 1 || !strings.Contains(strings.Join(ch.Notes, "\n"), "never confirmed") {
		t.Fatalf("after an unconfirmed trial: slot %s trial %v notes %q", ch.Slot, ch.Trial, ch.Notes)
	}
	if s, _, _ := update.Read(dir); s.Trial != nil || s.Last.Outcome != update.OutcomeFailed {
		t.Fatalf("state after fallback %+v", s)
	}
	// a trial whose image is gone by the time it boots
	if _, err := update.Stage(context.Background(), data, sign(3, web3), opts); err != nil {
		t.Fatal(err)
	}
	p, _ := data.BlobPath(web3.Digest)
	os.Remove(p)
	ch = choose()
	if ch.Slot != update.SlotA || ch.Trial || ch.VM.Version() != 1 {
		t.Fatalf("trial with a missing image: slot %s trial %v", ch.Slot, ch.Trial)
	}
	s, _, _ := update.Read(dir)
	if s.Trial != nil || s.Last.Version != 3 || !strings.Contains(s.Last.Why, "the initrd refused it") {
		t.Fatalf("state %+v %+v", s.Trial, s.Last)
	}
	// UKI slots: the default slot booted by another UKI than its own (a
	// confirm whose BootOrder write was lost) asks for BootOrder to be
	// repaired; booted by its own, nothing
	if _, err := update.Modify(dir, func(s *update.State) error {
		s.Slots[s.Default].UKI = &update.UKI{File: update.InstalledUKI, SHA256: "00", Entry: "Boot0003"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for booted, want := range map[string]string{"Boot0001": "Boot0003", "Boot0003": "", "": ""} {
		ch, err := ChooseBoot(dir, keys.CAs, pid, time.Time{}, booted, rw)
		if err != nil || ch.BootFirst != want || ch.Slot != update.SlotA {
			t.Fatalf("booted %q: BootFirst %q, want %q (%v)", booted, ch.BootFirst, want, err)
		}
		if want != "" && !strings.Contains(strings.Join(ch.Notes, "\n"), "the firmware booted Boot0001, not its UKI Boot0003") {
			t.Fatalf("notes %q", ch.Notes)
		}
	}
	// a damaged record: current.json boots
	os.WriteFile(update.StatePath(dir), []byte("{"), 0o644)
	if ch = choose(); ch.VM.Version() != 1 || !strings.Contains(strings.Join(ch.Notes, "\n"), "slot record unusable") {
		t.Fatalf("damaged record: %d %q", ch.VM.Version(), ch.Notes)
	}
}

func TestSupervisorArgsFor(t *testing.T) {
	pid := "0f8fad5b-d9cb-469f-a165-70867728950e"
	if got := strings.Join(supervisorArgsFor(nil, pid), " "); got != strings.Join(SupervisorArgs(pid), " ") {
		t.Fatalf("no record: %s", got)
	}
	got := strings.Join(supervisorArgsFor(&BootRecord{Signed: "system/manifests/ab.signed", Trial: true}, pid), " ")
	if !strings.HasSuffix(got, " up --ca "+HostCAFile+" --product-id "+pid+" "+HostDataDir+"/system/manifests/ab.signed --no-record") {
		t.Fatalf("trial: %s", got)
	}
	if got := strings.Join(supervisorArgsFor(&BootRecord{Signed: "system/manifests/ab.signed"}, pid), " "); strings.Contains(got, "--no-record") {
		t.Fatalf("default slot: %s", got)
	}
}
