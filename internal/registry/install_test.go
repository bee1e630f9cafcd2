package registry

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/image/imagetest"
	"github.com/vesselos/vessel/internal/registry/registrytest"
	"github.com/vesselos/vessel/internal/trust"
)

// Install end to end on distribution 2.8: a good manifest installs; a
// tampered signature and an untrusted signer are refused and change
// nothing; an install cut off mid-pull changes nothing and finishes when
// run again.
func TestInstall(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	build := openStore(t)
	web1 := imagetest.Squashfs(t, build, "web:1", map[string]string{"etc/hello": "one"})
	big := strings.Repeat("incompressible? no, but big enough to cut ", 1<<16)
	web3 := imagetest.Squashfs(t, build, "web:3", map[string]string{"etc/hello": "three", "data": big})
	p := newPKI(t, "Acme")
	c := newClient(t, Options{})
	repo := "docker://" + reg.Host + "/acme/product:"
	push := func(tag string, signed []byte) {
		t.Helper()
		if _, err := c.PushSigned(ctx(t), signed, mustRef(t, repo+tag), build); err != nil {
			t.Fatal(err)
		}
	}
	push("1", p.sign(t, 1, web1))
	st := openStore(t)
	opts := InstallOptions{Trust: trust.Options{CAs: p.CAs, ProductID: testPID}}
	cur, err := c.Install(ctx(t), st, mustRef(t, repo+"1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Version != 1 || len(cur.Images) != 1 || cur.Images[0].Digest != web1.Digest {
		t.Fatalf("installed %+v", cur)
	}
	if _, err := image.Verify(st, "system/web:v1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := trust.Verify(mustRead(t, filepath.Join(st.Root(), cur.Signed)), trust.Options{CAs: p.CAs, MinVersion: 1}); err != nil {
		t.Fatalf("recorded signed manifest: %v", err)
	}
	unchanged := func(why string) {
		t.Helper()
		now, err := ReadCurrent(st.Root())
		if err != nil || now.Digest != cur.Digest || now.Version != 1 {
			t.Fatalf("%s: current is %+v (%v), want version 1", why, now, err)
		}
		if r, _, _ := trust.OpenVersions(st.Root()).Get(testPID); r.Version != 1 {
			t.Fatalf("%s: accepted version is %d", why, r.Version)
		}
	}

	// a flipped signature byte
	s, _ := trust.ParseSigned(p.sign(t, 2, web1))
	s.Signature[len(s.Signature)/2] ^= 1
	tampered, _ := s.Marshal()
	push("2", tampered)
	_, err = c.Install(ctx(t), st, mustRef(t, repo+"2"), opts)
	if !errors.Is(err, ErrNoValidSignature) || !errors.Is(err, trust.ErrBadSignature) {
		t.Fatalf("tampered signature: %v", err)
	}
	unchanged("tampered signature")
	// signed by a product key of another CA
	push("2", newPKI(t, "Mallory").sign(t, 2, web1))
	if _, err = c.Install(ctx(t), st, mustRef(t, repo+"2"), opts); !errors.Is(err, trust.ErrUntrusted) {
		t.Fatalf("untrusted signer: %v", err)
	}
	unchanged("untrusted signer")

	// version 3, cut off in the middle of its layer, then run again
	push("3", p.sign(t, 3, web3))
	m3, _ := build.Manifest(web3.Digest)
	var killed atomic.Bool
	px := &proxy{upstream: reg.Host, onBody: func(path string, sent int64, chunk []byte) bool {
		return strings.HasSuffix(path, m3.Layers[0].Digest.String()) && sent > 0 && !killed.Swap(true)
	}}
	via := "docker://" + startProxy(t, px) + "/acme/product:3"
	if _, err := newClient(t, Options{Retries: NoRetries}).Install(ctx(t), st, mustRef(t, via), opts); err == nil {
		t.Fatal("install through a cut connection succeeded")
	}
	if !killed.Load() {
		t.Fatal("the proxy never cut the layer download")
	}
	unchanged("interrupted install")
	cur3, err := c.Install(ctx(t), st, mustRef(t, via), opts)
	if err != nil {
		t.Fatal(err)
	}
	if cur3.Version != 3 || cur3.Previous != cur.Digest {
		t.Fatalf("after the re-run: %+v", cur3)
	}
	// rollback to version 1 is refused now
	if _, err := c.Install(ctx(t), st, mustRef(t, repo+"1"), opts); !errors.Is(err, trust.ErrRollback) {
		t.Fatalf("rollback: %v", err)
	}
}

func mustRead(t testing.TB, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
