package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vesselos/vessel/internal/manifest"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/userns"
)

// productManifest signs services for one fixed product (a new product
// key each call, the same product id) and verifies them.
func (w *world) productManifest(t *testing.T, id string, version int64, services ...manifest.Service) *trust.VerifiedManifest {
	t.Helper()
	name := fmt.Sprintf("userns-%d-%d", version, len(services))
	if _, err := os.Stat(filepath.Join(w.keys, trust.ProductsDir, name)); err == nil {
		name += "-again"
	}
	pr, err := trust.Product(w.keys, trust.ProductOptions{Name: name, ProductID: id})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := w.s.Resolve("bb:1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range services {
		services[i].Image = manifest.Image{Ref: "bb:1", MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
		services[i].Restart, services[i].Network = manifest.RestartNever, manifest.NetworkNone
	}
	m := &manifest.Manifest{MediaType: manifest.MediaType, Product: pr.ProductID, Version: version, Services: services}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := trust.LoadKey(pr.Key)
	certs, _ := trust.LoadCerts(pr.Cert)
	signed, err := trust.Sign(b, key, certs)
	if err != nil {
		t.Fatal(err)
	}
	cas, _ := trust.LoadCerts(filepath.Join(w.keys, "manifest-ca.pem"))
	vm, err := trust.Verify(signed, trust.Options{CAs: cas, Images: w.s})
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// upUntilExited runs Up until every service (all restart: never) exited.
func (w *world) upUntilExited(t *testing.T, sup *Supervisor, vm *trust.VerifiedManifest) {
	t.Helper()
	// The previous Up's statuses say exited: they must not count.
	old, _ := filepath.Glob(filepath.Join(servicesDir(w.dir), "*.json"))
	for _, p := range old {
		os.Remove(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Up(ctx, vm) }()
	for _, s := range vm.Manifest().Services {
		waitFor(t, s.Name+" to exit", func() bool {
			select {
			case err := <-done:
				t.Fatalf("Up returned early: %v", err)
			default:
			}
			st := status(t, w.dir, s.Name)
			return st.State == StateExited || st.State == StateFailed
		})
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func logOf(t *testing.T, dir, name string) string {
	b, _ := os.ReadFile(LogFile(dir, name))
	return string(b)
}

// TestServiceUserNamespaces: services with userns: auto get disjoint
// ranges from vessel's delegation (never alice's), a group shares one; in
// the container id is 0 while uid_map shows the host range; the image's
// files look root-owned inside; a volume file is owned by the mapped host
// uid and no other service's root can read it; a restart keeps the
// ranges; a service that leaves the manifest frees its range.
func TestServiceUserNamespaces(t *testing.T) {
	w := newWorld(t)
	// The mapped roots must reach the run directory and the store.
	for _, d := range []string{filepath.Dir(w.run), filepath.Dir(w.root)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ids := t.TempDir()
	sub := "alice:100000:65536\nvessel:3000000:262144\n"
	alloc := &userns.Allocator{Dir: w.root, SubUIDFile: filepath.Join(ids, "subuid"), SubGIDFile: filepath.Join(ids, "subgid")}
	for _, f := range []string{alloc.SubUIDFile, alloc.SubGIDFile} {
		if err := os.WriteFile(f, []byte(sub), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sup := w.supervisor()
	sup.UserNS = alloc
	script := `cat /proc/self/uid_map; cat /proc/self/gid_map; echo id=$(/bin/busybox id -u):$(/bin/busybox id -g); echo bin=$(/bin/busybox stat -c %u:%g /bin/busybox); echo secret > /data/f; /bin/busybox ls -ln /data`
	svc := func(name, mode string) manifest.Service {
		return manifest.Service{Name: name, UserNS: mode, Command: []string{"/bin/sh", "-c", script}, Volumes: []manifest.Volume{{Name: "v", Path: "/data"}}}
	}
	const product = "4f8fad5b-d9cb-469f-a165-70867728950e"
	vm := w.productManifest(t, product, 1, svc("web", "auto"), svc("api", "auto"), svc("db", "group:data"), svc("worker", "group:data"))
	w.upUntilExited(t, sup, vm)

	list, err := alloc.List()
	if err != nil {
		t.Fatal(err)
	}
	ranges := map[string]userns.Assignment{}
	for _, as := range list {
		for _, s := range as.Services {
			ranges[s] = as
		}
	}
	if len(list) != 3 || ranges["db"].UID != ranges["worker"].UID {
		t.Fatalf("assignments %+v: want web, api and one for group data", list)
	}
	for _, name := range []string{"web", "api", "db", "worker"} {
		as := ranges[name]
		if as.UID.Start < 3000000 || as.UID.Start+as.UID.Count > 3000000+262144 {
			t.Errorf("%s: uids %+v outside vessel's delegation", name, as.UID)
		}
		log := logOf(t, w.dir, name)
		wantMap := fmt.Sprintf("0 %d 65536", as.UID.Start)
		if !strings.Contains(strings.Join(strings.Fields(log), " "), wantMap) {
			t.Errorf("%s: uid_map is not %q:\n%s", name, wantMap, log)
		}
		if !strings.Contains(log, "id=0:0\n") || !strings.Contains(log, "bin=0:0\n") {
			t.Errorf("%s: inside, want root and a root-owned image:\n%s", name, log)
		}
		// On the host, the file belongs to the mapped root.
		f := filepath.Join(w.root, "volumes", name, "v", "f")
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, log)
		}
		if st.Uid != as.UID.Start || st.Gid != as.GID.Start {
			t.Errorf("%s: volume file owned by %d:%d on the host, want %d:%d", name, st.Uid, st.Gid, as.UID.Start, as.GID.Start)
		}
	}
	if ranges["web"].UID == ranges["api"].UID || ranges["web"].UID == ranges["db"].UID || ranges["api"].UID == ranges["db"].UID {
		t.Errorf("ranges not disjoint: %+v", list)
	}
	// api's root, as the host sees it, cannot read web's volume file; web's can.
	read := func(uid uint32, p string) error {
		c := exec.Command("/bin/busybox", "cat", p)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	webFile := filepath.Join(w.root, "volumes", "web", "v", "f")
	if err := read(ranges["api"].UID.Start, webFile); err == nil {
		t.Error("api's root read web's volume file")
	}
	if err := read(ranges["web"].UID.Start, webFile); err != nil {
		t.Errorf("web's root cannot read its own volume file: %v", err)
	}

	// A restart keeps every range.
	w.upUntilExited(t, sup, vm)
	again, _ := alloc.List()
	if fmt.Sprint(again) != fmt.Sprint(list) {
		t.Errorf("ranges changed across a restart:\n%v\n%v", list, again)
	}
	// api leaves the manifest: its range is freed, the others stay.
	vm2 := w.productManifest(t, product, 2, svc("web", "auto"), svc("db", "group:data"), svc("worker", "group:data"))
	w.upUntilExited(t, sup, vm2)
	after, _ := alloc.List()
	if len(after) != 2 {
		t.Fatalf("after api left: %+v", after)
	}
	for _, as := range after {
		if as.Owner == "service:api" {
			t.Error("api's range was not freed")
		}
		if as.UID != ranges[as.Services[0]].UID {
			t.Errorf("%s moved from %v to %v", as.Owner, ranges[as.Services[0]].UID, as.UID)
		}
	}

	// A delegation that overlaps another user's range is refused.
	os.WriteFile(alloc.SubUIDFile, []byte("alice:100000:65536\nvessel:150000:262144\n"), 0o644)
	if err := sup.Up(context.Background(), vm2); !errors.Is(err, userns.ErrOverlap) {
		t.Errorf("up with vessel's range overlapping alice's: %v", err)
	}
}

func TestUserNSNeedsAllocator(t *testing.T) {
	sup := &Supervisor{}
	m := &manifest.Manifest{Services: []manifest.Service{{Name: "web", UserNS: "auto"}}}
	if _, err := sup.syncUserNS("p", m); err == nil || !strings.Contains(err.Error(), "service web: userns auto") {
		t.Errorf("userns without an allocator: %v", err)
	}
}
