package vmtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/registry/registrytest"
)

// The guest reaches the registry at this address only: qemu's guestfwd
// turns each connection into `nc 127.0.0.1 PORT` on the host.
const netRegistry = "10.0.2.100:5000"

// netCmdline is the one command line of every network-boot UKI here: the
// tag "boot" is what each test's proxy maps to the manifest it serves.
const netCmdline = "console=ttyS0 vessel.test=root,services vessel.manifest=docker://" + netRegistry + "/acme/system:boot vessel.registry-plain-http=1"

// regProxy stands between the guest and the registry on 127.0.0.1: it
// maps the tag "boot" to another tag, counts blob GETs and their bytes,
// and may flip a byte of one blob on the way.
type regProxy struct {
	addr   string
	tag    string
	tamper string // blob digest to damage, "" for none

	mu    sync.Mutex
	gets  map[string]int // blob digest -> GETs
	bytes int64          // bytes of every manifest and blob GET
	srv   *http.Server
}

func startProxy(t *testing.T, registry, tag, tamper string) *regProxy {
	t.Helper()
	p := &regProxy{tag: tag, tamper: tamper, gets: map[string]int{}}
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		req := resp.Request
		if req.Method != http.MethodGet || resp.StatusCode != 200 {
			return nil
		}
		if strings.Contains(req.URL.Path, "/manifests/") {
			p.mu.Lock()
			p.bytes += resp.ContentLength
			p.mu.Unlock()
		}
		if !strings.Contains(req.URL.Path, "/blobs/sha256:") {
			return nil
		}
		d := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
		p.mu.Lock()
		p.gets[d]++
		p.bytes += resp.ContentLength
		p.mu.Unlock()
		if d == p.tamper {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 0x40
			resp.Body = io.NopCloser(strings.NewReader(string(b)))
		}
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/boot") {
			r.URL.Path = strings.TrimSuffix(r.URL.Path, "boot") + p.tag
		}
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(l)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// counts returns the blob GETs so far (by digest) and the bytes of every
// manifest and blob GET, and forgets them.
func (p *regProxy) counts() (map[string]int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, b := p.gets, p.bytes
	p.gets, p.bytes = map[string]int{}, 0
	return g, b
}

func (p *regProxy) guestfwd() string {
	return "guestfwd=tcp:" + netRegistry + "-cmd:nc " + strings.Replace(p.addr, ":", " ", 1)
}

// netProduct is what the network-boot tests serve: images, signed
// manifests pushed to a real registry, the UKI and its netdir, disks.
type netProduct struct {
	reg        *registrytest.Distribution
	netdir     string
	esp        string
	imageBlobs map[string]bool // every blob of the images (sha256:...)
	uki        string
	cacheDisk  string // data partition with version 1 installed (host, web)
	newerDisk  string // data partition with version 2 installed
	localDisk  string // version 2, booting from its disk (no vessel.manifest)
	imageBytes int64  // the size of every blob of version 2's images
	web2Layer  string
}

func makeNetProduct(t *testing.T, e *bootEnv, withLocal bool) *netProduct {
	t.Helper()
	if _, err := os.Stat("/usr/bin/nc"); err != nil {
		t.Skip("missing nc (make deps installs netcat-openbsd): qemu's guestfwd runs it to reach the registry")
	}
	if !registrytest.Available() {
		t.Skip("missing docker-registry (make deps)")
	}
	d := makeImages(t, e)
	np := &netProduct{reg: registrytest.Start(t, registrytest.Options{}), imageBlobs: map[string]bool{}}
	v := d.v
	dir := d.dir
	v("boot", "uki", "--kernel", e.kernel, "--initrd", d.initrd, "--cmdline", netCmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", "net.efi")
	np.uki = filepath.Join(dir, "net.efi")
	np.netdir = filepath.Join(dir, "tftp")
	// The same UKI on an ESP directory: the refusal cases need no PXE
	// (loading 40 MB by TFTP is the slowest part of a boot under TCG).
	np.esp = filepath.Join(dir, "esp")
	os.MkdirAll(filepath.Join(np.esp, "EFI", "BOOT"), 0o755)
	copyExec(t, np.uki, filepath.Join(np.esp, "EFI", "BOOT", "BOOTX64.EFI"))
	v("boot", "netdir", "--uki", "net.efi", "--cert", e.dbCert, "-o", np.netdir)
	if withLocal {
		v("boot", "uki", "--kernel", e.kernel, "--initrd", d.initrd, "--cmdline", servicesCmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", "local.efi")
	}
	web2 := "  - name: web2\n    image: web2:1\n    command: [/bin/sh, -c, '" + httpd(8081, "/www") + "']\n    network: host\n"
	sign := func(name, product string, version int, extra string) string {
		sys := fmt.Sprintf("product: %s\nversion: %d\nhostfs: host:1\nservices:\n  - name: web\n    image: web:1\n"+
			"    command: [/bin/sh, -c, '%s']\n    network: host\n", product, version, httpd(8080, "/www")) + extra
		os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(sys), 0o644)
		v("manifest", "build", name+".yaml", "--keys", "keys", "-o", name+".json")
		v("manifest", "sign", name+".json", "--key", "keys/products/"+product+"/product.key", "--cert", "keys/products/"+product+"/product.pem", "-o", name+".signed")
		v("manifest", "push", name+".signed", "docker://"+np.reg.Host+"/acme/system:"+name, "--plain-http")
		return name + ".signed"
	}
	v1 := sign("v1", "acme", 1, "")
	v2 := sign("v2", "acme", 2, web2)
	sign("other", "other", 2, web2)
	disk := func(signed, uki, name string) string {
		img := filepath.Join(dir, name)
		v("boot", "disk", "--manifest", signed, "--uki", uki, "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--size", "400M", "-o", img)
		return img
	}
	np.cacheDisk = disk(v1, "net.efi", "cache.img")
	np.newerDisk = disk(v2, "net.efi", "newer.img")
	if withLocal {
		np.localDisk = disk(v2, "local.efi", "local.img")
	}
	np.web2Layer = d.web2Layer
	// The images' size: every blob in the store (host, web, web2: each
	// shared layer once).
	blobs, err := os.ReadDir(filepath.Join(dir, "store", "oci", "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		if fi, err := b.Info(); err == nil && fi.Mode().IsRegular() {
			np.imageBytes += fi.Size()
			np.imageBlobs["sha256:"+b.Name()] = true
		}
	}
	return np
}

// TestNetBoot boots the signed product from a registry (docker-registry on
// 127.0.0.1, reached through a counting proxy and qemu's guestfwd):
// diskless by true PXE (OVMF loads the UKI from qemu's TFTP, Secure Boot
// on, no disk) to services up; with a data partition as a cache (only
// what changed is pulled, and nothing at the second boot); a tampered
// blob, another product's manifest, a tag moved to an older version, and
// a registry that is down are refused and the boot halts.
func TestNetBoot(t *testing.T) {
	e := setupBoot(t)
	np := makeNetProduct(t, e, false)
	bootTo := func(t *testing.T, cfg Config, markers ...string) *VM {
		t.Helper()
		// The TPM's hwrng seeds the kernel's random pool (DHCP needs it).
		cfg.Vars, cfg.MemoryMB, cfg.Timeout, cfg.TPM = e.vars, 1024, 9*time.Minute, true
		vm := StartT(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		if _, err := vm.Wait(ctx, markers...); err != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(50))
		}
		if err := vm.WaitExit(ctx); err != nil {
			t.Fatalf("the guest did not power off: %v\n%s", err, vm.Tail(40))
		}
		return vm
	}
	must := func(t *testing.T, vm *VM, s string) string {
		t.Helper()
		l, ok := vm.Find(s)
		if !ok {
			t.Fatalf("no %q on the console:\n%s", s, vm.Tail(50))
		}
		return l.Text
	}
	refused := func(t *testing.T, vm *VM, wants ...string) {
		t.Helper()
		if l, ok := vm.Find("vessel-host:"); ok {
			t.Fatalf("the host ran: %s\n%s", l.Text, vm.Tail(40))
		}
		if _, ok := vm.Find("vessel-init: host image"); ok {
			t.Fatalf("a host image was mounted:\n%s", vm.Tail(40))
		}
		l := must(t, vm, "vessel-init: FAILED")
		for _, w := range wants {
			if !strings.Contains(l, w) {
				t.Errorf("failure line lacks %q: %s", w, l)
			}
		}
		t.Logf("console: %s", l)
	}
	t.Run("pxe-diskless-services", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, np.reg.Host, "v2", "")
		port := freeTCPPort(t)
		vm := bootTo(t, Config{TFTPDir: np.netdir, BootFile: "bootx64.efi", Net: []string{p.guestfwd(), fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:8080", port)}},
			"vessel-host: powering off", "vessel-init: powering off")
		if l, ok := vm.Find("FAILED"); ok {
			t.Fatalf("%s\n%s", l.Text, vm.Tail(50))
		}
		must(t, vm, "vessel-init: network: ")
		must(t, vm, "image store: tmpfs (no vessel-data partition)")
		res := must(t, vm, "vessel-init: tag docker://"+netRegistry+"/acme/system:boot resolved to docker://"+netRegistry+"/acme/system@sha256:")
		must(t, vm, "vessel-init: manifest sha256:")
		must(t, vm, "vessel-host: up (manifest ")
		up := must(t, vm, "vessel-host: services up: web")
		if !strings.Contains(up, "web2") {
			t.Errorf("web2 is not up: %s", up)
		}
		gets, bytes := p.counts()
		t.Logf("%s\n%s\n%d blob GETs, %d bytes of manifests and blobs through the proxy; the images are %d bytes (%.3fx)", res, up, len(gets), bytes, np.imageBytes, float64(bytes)/float64(np.imageBytes))
		if bytes < np.imageBytes {
			t.Errorf("pulled %d bytes, less than the images' %d", bytes, np.imageBytes)
		}
		for d, n := range gets {
			if n != 1 {
				t.Errorf("blob %s fetched %d times", d, n)
			}
		}
		bootTimes(t, vm, "network (PXE, diskless)")
	})
	t.Run("cache-pulls-only-changes", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, np.reg.Host, "v2", "")
		disk := np.cacheDisk
		vm := bootTo(t, Config{Disk: disk, Net: []string{p.guestfwd()}}, "vessel-host: powering off", "vessel-init: powering off")
		if l, ok := vm.Find("FAILED"); ok {
			t.Fatalf("%s\n%s", l.Text, vm.Tail(50))
		}
		must(t, vm, "image cache: data partition /dev/vda2 (vessel-data)")
		first := must(t, vm, "vessel-init: pulled ")
		must(t, vm, "vessel-host: services up: web")
		gets1, bytes1 := p.counts()
		// Version 1 (host, web) was on the disk: only web2's manifest,
		// config and own layer are new, plus the signed manifest's
		// artifact blobs (the payload and the signature).
		if gets1[np.web2Layer] != 1 {
			t.Errorf("web2's layer %s fetched %d times at the first boot, want 1", np.web2Layer, gets1[np.web2Layer])
		}
		var imgs1 []string
		for d := range gets1 {
			if np.imageBlobs[d] {
				imgs1 = append(imgs1, d)
			}
		}
		if len(imgs1) > 2 {
			t.Errorf("first boot fetched %d image blobs %v; only web2's layer and config are new", len(imgs1), imgs1)
		}
		vm2 := bootTo(t, Config{Disk: disk, Net: []string{p.guestfwd()}}, "vessel-host: powering off", "vessel-init: powering off")
		if l, ok := vm2.Find("FAILED"); ok {
			t.Fatalf("second boot: %s\n%s", l.Text, vm2.Tail(50))
		}
		second := must(t, vm2, "vessel-init: pulled ")
		must(t, vm2, "vessel-host: services up: web")
		gets2, bytes2 := p.counts()
		if !strings.Contains(second, "vessel-init: pulled 0 bytes in 0 blobs") {
			t.Errorf("the second boot pulled image blobs: %s", second)
		}
		// Only the signed manifest artifact's own small blobs (payload,
		// signature) are fetched again: it is checked at every boot.
		var again []string
		for d := range gets2 {
			again = append(again, d)
			if np.imageBlobs[d] {
				t.Errorf("second boot fetched image blob %s again", d)
			}
		}
		sort.Strings(again)
		if len(gets2) == 0 {
			t.Error("second boot fetched no blob at all: the signed manifest must be fetched and verified at every boot")
		}
		t.Logf("first boot: %s (%d bytes of blob GETs)\nsecond boot: %s (%d bytes of blob GETs: %v)", first, bytes1, second, bytes2, again)
	})
	t.Run("tampered-blob-refused", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, np.reg.Host, "v2", np.web2Layer)
		vm := bootTo(t, Config{ESPDir: np.esp, Net: []string{p.guestfwd()}}, "vessel-init: powering off")
		refused(t, vm, "network boot", np.web2Layer, "content does not match its digest")
	})
	soak := func(t *testing.T) {
		if os.Getenv("VESSEL_VM_SOAK") == "" {
			t.Skip("VESSEL_VM_SOAK=1 (make vm-soak): keeps make test's VM time down")
		}
	}
	t.Run("other-product-refused", func(t *testing.T) {
		soak(t)
		t.Parallel()
		p := startProxy(t, np.reg.Host, "other", "")
		vm := bootTo(t, Config{ESPDir: np.esp, Net: []string{p.guestfwd()}}, "vessel-init: powering off")
		refused(t, vm, "network boot", "no valid signature", "product")
	})
	t.Run("tag-moved-back-refused", func(t *testing.T) {
		soak(t)
		t.Parallel()
		// The data partition accepted version 2; the tag now names 1.
		p := startProxy(t, np.reg.Host, "v1", "")
		vm := bootTo(t, Config{Disk: np.newerDisk, Net: []string{p.guestfwd()}}, "vessel-init: powering off")
		refused(t, vm, "network boot", "version: manifest version 1 is lower than version 2 already accepted")
	})
	t.Run("registry-down", func(t *testing.T) {
		soak(t) // the retry logic itself: TestRetryBounded in internal/initrd
		t.Parallel()
		// nc to a port nothing listens on: every connection closes.
		down := fmt.Sprintf("guestfwd=tcp:%s-cmd:nc 127.0.0.1 %d", netRegistry, freeTCPPort(t))
		vm := bootTo(t, Config{ESPDir: np.esp, Net: []string{down}}, "vessel-init: powering off")
		refused(t, vm, "network boot: registry "+netRegistry+" unreachable: 5 attempts failed, giving up")
		for i := 1; i <= 4; i++ {
			must(t, vm, fmt.Sprintf("vessel-init: registry %s: attempt %d of 5 failed: ", netRegistry, i))
		}
	})
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// bootTimes logs the guest's uptime at switch_root and (from the host's
// clock of the console lines) at services up; it returns the latter.
func bootTimes(t *testing.T, vm *VM, what string) float64 {
	t.Helper()
	started, ok1 := vm.Find("vessel-init: started")
	up, ok2 := vm.Find("vessel-host: services up:")
	if !ok1 || !ok2 {
		return 0
	}
	m := regexp.MustCompile(`uptime ([0-9.]+)s`).FindStringSubmatch(started.Text)
	if m == nil {
		return 0
	}
	u, _ := strconv.ParseFloat(m[1], 64)
	// The kernel started u seconds before the marker line appeared.
	kernel := started.At.Seconds() - u
	svc := up.At.Seconds() - kernel
	t.Logf("%s: kernel start to services up %.2fs (firmware + kernel load before it: %.2fs)", what, svc, kernel)
	return svc
}

// netImages is a store with host:1 (busybox, the static vessel as
// /sbin/init, runc), web:1 and web2:1, a manifest key set (products acme
// and other) and an initrd carrying its CA.
type netImages struct {
	v         func(args ...string) string
	dir       string
	initrd    string
	web2Layer string
}

func makeImages(t *testing.T, e *bootEnv) *netImages {
	t.Helper()
	needDiskTools(t, "runc")
	dir := filepath.Join(e.dir, "net")
	for _, d := range []string{filepath.Join(dir, "app", "www"), filepath.Join(dir, "app2", "www")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hostTree(t, dir, e.vessel, true)
	os.WriteFile(filepath.Join(dir, "app", "www", "index.html"), []byte("hello from a network-booted service\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "app2", "www", "index.html"), []byte("version 2 adds this service\n"), 0o644)
	v := vesselIn(t, e.vessel, dir, filepath.Join(dir, "store"))
	v("image", "create", "host:1", "--layer", "busybox", "--layer", "vessel", "--layer", "runc")
	v("image", "create", "web:1", "--layer", "busybox", "--layer", "app")
	v("image", "create", "web2:1", "--layer", "busybox", "--layer", "app2")
	layers := regexp.MustCompile(`(?m)^\s+\d+\. (sha256:[0-9a-f]{64})$`).FindAllStringSubmatch(v("inspect", "web2:1"), -1)
	if len(layers) != 2 {
		t.Fatalf("web2 has layers %v, want 2", layers)
	}
	v("keys", "init", "keys", "--org", "Acme")
	v("keys", "product", "keys", "--name", "acme", "--product-id", productID)
	v("keys", "product", "keys", "--name", "other", "--product-id", otherProductID)
	initrd := filepath.Join(dir, "initrd.img")
	v("boot", "initrd", "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--modules", e.modules, "-o", initrd)
	return &netImages{v: v, dir: dir, initrd: initrd, web2Layer: layers[1][1]}
}

// TestNetBootCompare (VESSEL_VM_BENCH=1) boots the same product (version
// 2: host, web, web2) from a local disk and over the network (PXE,
// diskless, images into a tmpfs), alternating, VESSEL_VM_BENCH_N times
// each (default 2), and prints kernel start to services up for both and
// the ratio, and the bytes pulled against the images' size.
func TestNetBootCompare(t *testing.T) {
	if os.Getenv("VESSEL_VM_BENCH") == "" {
		t.Skip("a benchmark: VESSEL_VM_BENCH=1 go test -v -run TestNetBootCompare ./internal/vmtest/")
	}
	n := 2
	if v, err := strconv.Atoi(os.Getenv("VESSEL_VM_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	e := setupBoot(t)
	np := makeNetProduct(t, e, true)
	p := startProxy(t, np.reg.Host, "v2", "")
	boot := func(cfg Config) *VM {
		// The TPM's hwrng seeds the kernel's random pool (DHCP needs it).
		cfg.Vars, cfg.MemoryMB, cfg.Timeout, cfg.TPM = e.vars, 1024, 9*time.Minute, true
		vm := StartT(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if _, err := vm.Wait(ctx, "vessel-host: powering off", "vessel-init: powering off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(50))
		}
		vm.Kill()
		if l, ok := vm.Find("FAILED"); ok {
			t.Fatalf("%s\n%s", l.Text, vm.Tail(50))
		}
		return vm
	}
	var local, network []float64
	for i := 0; i < n; i++ {
		disk := filepath.Join(t.TempDir(), "local.img")
		run(t, "cp", "--sparse=always", np.localDisk, disk)
		// A NIC as in the network boot (the host's vessel.ip= needs one).
		vm := boot(Config{Disk: disk, Net: []string{fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:8080", freeTCPPort(t))}})
		local = append(local, bootTimes(t, vm, "local disk"))
		vm = boot(Config{TFTPDir: np.netdir, BootFile: "bootx64.efi", Net: []string{p.guestfwd()}})
		network = append(network, bootTimes(t, vm, "network"))
		pulled, _ := vm.Find("vessel-init: pulled ")
		_, bytes := p.counts()
		t.Logf("%s\nmanifest and blob bytes through the proxy %d; the images are %d bytes (%.3fx)", pulled.Text, bytes, np.imageBytes, float64(bytes)/float64(np.imageBytes))
	}
	sort.Float64s(local)
	sort.Float64s(network)
	ml, mn := local[len(local)/2], network[len(network)/2]
	t.Logf("kernel start to services up: local disk %v (median %.2fs), network %v (median %.2fs): network/local %.2fx", local, ml, network, mn, mn/ml)
}
