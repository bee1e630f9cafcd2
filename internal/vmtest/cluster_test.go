package vmtest

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/cluster"
	"github.com/vesselos/vessel/internal/trust"
)

// syncBuffer is a log that servers write from their goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestClusterJoin boots vessel boot disks whose host joins two `vessel
// cluster serve` servers on the host's loopback at boot (vessel.cluster=
// on the UKI's command line; qemu user networking restrict=on with one
// guestfwd per server). Server A allows the running manifest and the
// enrolled db key that signs the good UKI; server B allows another
// manifest. The guest's vTPM was provisioned from the host side before
// the first boot (the model of factory provisioning: SRK, identity key,
// identity certificate, a signed PCR7 policy for the predicted PCR7, all
// on the data partition's tpm/).
//
//   - good UKI: A admits the machine (mutual TLS with the TPM identity key,
//     a quote for A's nonce verified against A's policy, a cluster
//     certificate back); B refuses it: the manifest is not on its allow list.
//   - UKI signed by a second enrolled db key (and a policy for its PCR7, so
//     the identity key still signs): A refuses it, naming the db signer.
//
// The initrd carries the TPM policy key, so its TPM step runs and locks
// PCR7 before the host starts: the joins happen after the lock, with the
// identity key's identity approval (nothing seals the state volume here,
// so that step reports it cannot unseal, and the boot goes on). Two VMs in
// parallel.
func TestClusterJoin(t *testing.T) {
	e := setupBoot(t)
	needDiskTools(t, "nc", "runc")
	dir := filepath.Join(e.dir, "cluster")
	store := filepath.Join(dir, "store")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := vesselIn(t, e.vessel, dir, store)

	// A second db certificate, enrolled beside the first.
	sbDir := filepath.Dir(e.dbKey)
	db2Key, db2Cert := filepath.Join(dir, "db2.key"), filepath.Join(dir, "db2.crt")
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", db2Key, "-out", db2Cert,
		"-subj", "/CN=vmtest cluster second db", "-days", "30")
	vars := filepath.Join(dir, "VARS.fd")
	writeVars(t, sbDir, db2Cert, nil, vars)

	// The product: host image (busybox, vessel as init, runc), a web
	// service, a signed manifest, UKIs signed by each db key.
	clusterImages(t, e, dir, v)
	policyKey(t, dir)
	v("keys", "init", "keys", "--org", "Acme")
	v("keys", "product", "keys", "--name", "acme", "--product-id", productID)
	initrd := filepath.Join(dir, "initrd.img")
	// With the policy key the initrd runs its TPM step, which ends with
	// the lock: the host joins from a locked boot, as a product does.
	v("boot", "initrd", "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--modules", e.modules, "--tpm-policy-key", "policy.pub", "-o", initrd)
	cmdline := "console=ttyS0 vessel.test=root,services vessel.ip=10.0.2.15/24 vessel.cluster=https://10.0.2.100:8443,https://10.0.2.101:8443"
	uki1, uki2 := filepath.Join(dir, "db1.efi"), filepath.Join(dir, "db2.efi")
	v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", cmdline, "--key", e.dbKey, "--cert", e.dbCert, "-o", uki1)
	v("boot", "uki", "--kernel", e.kernel, "--initrd", initrd, "--cmdline", cmdline, "--key", db2Key, "--cert", db2Cert, "-o", uki2)
	sys := fmt.Sprintf("product: acme\nversion: 2\nhostfs: host:1\nservices:\n  - name: web\n    image: web:1\n"+
		"    command: [/bin/sh, -c, '%s']\n    network: host\n", httpd(8080, "/www"))
	os.WriteFile(filepath.Join(dir, "system.yaml"), []byte(sys), 0o644)
	v("manifest", "build", "system.yaml", "--keys", "keys", "-o", "m.json")
	v("manifest", "sign", "m.json", "--key", "keys/products/acme/product.key", "--cert", "keys/products/acme/product.pem", "-o", "m.signed")
	var sum struct {
		Digest string `json:"digest"`
	}
	if out := v("--json", "manifest", "verify", "m.signed", "--ca", "keys/manifest-ca.pem"); json.Unmarshal([]byte(out), &sum) != nil || sum.Digest == "" {
		t.Fatalf("manifest verify --json: %s", out)
	}
	disk1, disk2 := filepath.Join(dir, "db1.img"), filepath.Join(dir, "db2.img")
	for disk, uki := range map[string]string{disk1: uki1, disk2: uki2} {
		v("boot", "disk", "--manifest", "m.signed", "--uki", uki, "--ca", "keys/manifest-ca.pem", "--product-id", productID, "--size", "400M", "-o", disk)
	}

	// Factory provisioning of the vTPM from the host: vessel tpm on swtpm.
	tpmState, tpmFiles := provisionVTPM(t, e, dir, v)
	policyFor := func(signer string) []byte {
		cmd := exec.Command(e.vessel, "tpm", "pcr7", "predict", "--vars", vars, "--signer", signer)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("pcr7 predict --signer %s: %v", signer, err)
		}
		p := filepath.Join(dir, filepath.Base(signer)+".policy")
		v("tpm", "policy", "sign", "--key", "policy.key", "--pcr7", strings.TrimSpace(string(out)), "-o", p)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca, caKey, err := cluster.NewCA("Acme", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for disk, signer := range map[string]string{disk1: e.dbCert, disk2: db2Cert} {
		pol := policyFor(signer)
		files := map[string][]byte{"tpm/policy.signed": pol, "tpm/policies/boot.signed": pol, "tpm/cluster-ca.pem": trust.PEMCerts(ca)}
		for name, b := range tpmFiles {
			files["tpm/"+name] = b
		}
		writeDataFiles(t, disk, files)
	}

	// The servers, on the host's loopback.
	load := func(p string) []*x509.Certificate {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		cs, err := trust.LoadCerts(p)
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	db1 := load(e.dbCert)
	pol := attest.Policy{MachineCAs: load("keys/identity-ca.pem"), ManifestCAs: load("keys/manifest-ca.pem"),
		ProductID: productID, AllowManifests: []string{sum.Digest}, UKISigners: db1}
	polB := pol
	polB.AllowManifests = []string{"sha256:" + strings.Repeat("0", 64)}
	var logA, logB syncBuffer
	addrA := serveCluster(t, &cluster.Server{Policy: pol, CA: ca, CAKey: caKey, Validity: 15 * time.Minute, Log: &logA})
	addrB := serveCluster(t, &cluster.Server{Policy: polB, CA: ca, CAKey: caKey, Log: &logB})
	net := []string{"guestfwd=tcp:10.0.2.100:8443-cmd:nc 127.0.0.1 " + portOf(addrA), "guestfwd=tcp:10.0.2.101:8443-cmd:nc 127.0.0.1 " + portOf(addrB)}

	boot := func(t *testing.T, disk string) *VM {
		st := filepath.Join(t.TempDir(), "vtpm")
		run(t, "cp", "-a", tpmState, st)
		vm := StartT(t, Config{Disk: disk, Vars: vars, MemoryMB: 768, TPM: true, TPMState: st, Net: net, Timeout: 8 * time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
		defer cancel()
		if _, err := vm.Wait(ctx, "vessel-host: powering off", "vessel-init: powering off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Tail(40))
		}
		return vm
	}
	find := func(t *testing.T, vm *VM, re string) string {
		t.Helper()
		r := regexp.MustCompile(re)
		for _, l := range vm.Lines() {
			if r.MatchString(l.Text) {
				return l.Text
			}
		}
		t.Fatalf("no serial line matches %q:\n%s", re, vm.Tail(40))
		return ""
	}
	digest := regexp.QuoteMeta(sum.Digest)
	t.Run("admitted-and-refused-by-allow-list", func(t *testing.T) {
		t.Parallel()
		vm := boot(t, disk1)
		l := find(t, vm, `vessel-host: cluster joined https://10\.0\.2\.100:8443: certificate 0x[0-9a-f]+ for m-vm until \S+ \(manifest `+digest+` version 2, PCR7 locked: true\)`)
		t.Logf("%s", l)
		t.Logf("%s", find(t, vm, `vessel-host: cluster join https://10\.0\.2\.101:8443 refused: .*join refused \(HTTP 403\): attestation refused: allow-list: `+digest+` \(version 2\) is not allowed`))
		if !regexp.MustCompile(`cluster: admitted m-vm \(product ` + productID + `, manifest ` + digest + ` version 2\)`).MatchString(logA.String()) {
			t.Errorf("server A did not log the admission:\n%s", logA.String())
		}
	})
	t.Run("other-db-key-refused", func(t *testing.T) {
		t.Parallel()
		vm := boot(t, disk2)
		t.Logf("%s", find(t, vm, `vessel-host: cluster join https://10\.0\.2\.100:8443 refused: .*attestation refused: uki-signer: verified by "CN=vmtest cluster second db"`))
		if _, ok := vm.Find("vessel-host: cluster joined"); ok {
			t.Errorf("a UKI signed by the second db key joined:\n%s", vm.Tail(40))
		}
		if !strings.Contains(logA.String(), "uki-signer") {
			t.Errorf("server A did not log the refusal:\n%s", logA.String())
		}
	})
}

// clusterImages makes host:1 (busybox, vessel as /sbin/init, runc and its
// libraries) and web:1 (busybox, a page) in the store of v.
func clusterImages(t *testing.T, e *bootEnv, dir string, v func(...string) string) {
	t.Helper()
	app := filepath.Join(dir, "app")
	if err := os.MkdirAll(filepath.Join(app, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostTree(t, dir, e.vessel, true)
	os.WriteFile(filepath.Join(app, "www", "index.html"), []byte("hello\n"), 0o644)
	v("image", "create", "host:1", "--layer", "busybox", "--layer", "vessel", "--layer", "runc")
	v("image", "create", "web:1", "--layer", "busybox", "--layer", "app")
}

// provisionVTPM provisions a vTPM state directory from the host, as a
// factory would: vessel tpm provision on swtpm, the identity key's CSR
// (authorized by a policy for the host swtpm's PCR7), the identity
// certificate from the machine CA. It returns the swtpm state directory
// and the files for the data partition's tpm/ (state.json, identity.key,
// identity.pem). The policy key is dir/policy.key (policyKey).
func provisionVTPM(t *testing.T, e *bootEnv, dir string, v func(...string) string) (string, map[string][]byte) {
	t.Helper()
	state := filepath.Join(dir, "vtpm-state")
	sockDir, err := os.MkdirTemp("", "vtpm-prov-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	os.MkdirAll(state, 0o700)
	sock := filepath.Join(sockDir, "s")
	sw := exec.Command(Swtpm, "socket", "--tpm2", "--tpmstate", "dir="+state, "--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+sock+".ctrl", "--flags", "not-need-init,startup-clear")
	if err := sw.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			sw.Process.Kill()
			sw.Wait()
		}
	}
	defer stop()
	if err := waitFor(sock, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	tstate := filepath.Join(dir, "tpm")
	tv := func(args ...string) string {
		return v(append([]string{"tpm", "--tpm", sock, "--state", tstate}, args...)...)
	}
	tv("provision", "--policy-key", "policy.pub")
	tv("policy", "sign", "--key", "policy.key", "--from-current", "-o", "factory.signed")
	tv("identity", "csr", "--policy", "factory.signed", "--cn", "m-vm", "-o", "m.csr")
	v("keys", "machine", "keys", "--csr", "m.csr", "--product-id", productID, "--machine-id", "m-vm", "-o", filepath.Join(tstate, "identity.pem"))
	stop() // swtpm writes its state on exit
	files := map[string][]byte{}
	for _, f := range []string{"state.json", "identity.key", "identity.pem"} {
		b, err := os.ReadFile(filepath.Join(tstate, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	return state, files
}

// policyKey makes the fleet's TPM policy-signing key: dir/policy.key and
// dir/policy.pub.
func policyKey(t *testing.T, dir string) {
	t.Helper()
	run(t, "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", filepath.Join(dir, "policy.ec"))
	run(t, "openssl", "pkcs8", "-topk8", "-nocrypt", "-in", filepath.Join(dir, "policy.ec"), "-out", filepath.Join(dir, "policy.key"))
	run(t, "openssl", "ec", "-in", filepath.Join(dir, "policy.key"), "-pubout", "-out", filepath.Join(dir, "policy.pub"))
}

// writeDataFiles writes files (paths relative to the partition's root)
// into the vessel-data partition of a disk image.
func writeDataFiles(t *testing.T, img string, files map[string][]byte) {
	t.Helper()
	withPartition(t, img, "vessel-data", func(mnt string) {
		for name, b := range files {
			p := filepath.Join(mnt, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// serveCluster runs srv on a free port of 127.0.0.1 until the test ends,
// with a certificate for the guest's view of it (10.0.2.100, 10.0.2.101).
func serveCluster(t *testing.T, srv *cluster.Server) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- srv.ListenAndServe(ctx, "127.0.0.1:0", []string{"10.0.2.100", "10.0.2.101"}, func(a string) { addr <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cluster server: %v", err)
		}
	})
	select {
	case a := <-addr:
		return a
	case err := <-done:
		t.Fatalf("cluster server: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("cluster server did not start")
	}
	return ""
}

func portOf(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }
