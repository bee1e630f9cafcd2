// Package registrytest starts real registries for tests: Debian's
// docker-registry (distribution 2.8) as a child process on a free loopback
// port. Only tests import it.
package registrytest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Binary is the registry program the tests run (package docker-registry).
const Binary = "docker-registry"

// User and Password are accepted by a registry started with Auth.
const (
	User     = "vessel"
	Password = "s3cret"
	// htpasswd line for User:Password (bcrypt, cost 5)
	htpasswdLine = "vessel:$2a$05$76sI3w3YyVJEcRH9CIoOLuP.d4uK6HIJy3qQHGYdTAAzcTK8HgCGG\n"
)

// Options for a registry.
type Options struct {
	Auth bool // require User:Password (htpasswd, basic auth)
}

// Distribution is a running docker-registry.
type Distribution struct {
	Host string // 127.0.0.1:PORT
	Dir  string // its storage and logs
	cfg  string
	cmd  *exec.Cmd
	log  *os.File
}

// Available reports whether the registry binary is installed.
func Available() bool {
	_, err := exec.LookPath(Binary)
	return err == nil
}

// Start starts a docker-registry in a temp dir, or skips the test with a
// clear message when the binary is not installed. It is stopped when the
// test ends.
func Start(t testing.TB, opts Options) *Distribution {
	t.Helper()
	if !Available() {
		t.Skipf("%s is not installed (Debian package docker-registry; run 'make deps')", Binary)
	}
	d, err := New(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	return d
}

// New writes a registry configuration in dir for a free loopback port.
func New(dir string, opts Options) (*Distribution, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &Distribution{Host: fmt.Sprintf("127.0.0.1:%d", port), Dir: dir, cfg: filepath.Join(dir, "config.yml")}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), d.Host)
	if opts.Auth {
		hp := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(hp, []byte(htpasswdLine), 0o600); err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: vessel-test\n    path: %s\n", hp)
	}
	return d, os.WriteFile(d.cfg, []byte(cfg), 0o644)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs the registry (again, after Kill: same port, same data) and
// waits until it answers.
func (d *Distribution) Start() error {
	log, err := os.OpenFile(filepath.Join(d.Dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	d.log = log
	d.cmd = exec.Command(Binary, "serve", d.cfg)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", Binary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + d.Host + "/v2/")
		if err == nil {
			resp.Body.Close()
			go func() { <-exited }() // reap it when it ends
			return nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(d.Dir, "registry.log"))
			return fmt.Errorf("%s exited (%v): %s", Binary, err, strings.TrimSpace(string(b)))
		case <-time.After(20 * time.Millisecond):
		}
	}
	d.Kill()
	return fmt.Errorf("%s did not answer on %s within 10s", Binary, d.Host)
}

// Kill stops the registry at once (SIGKILL), as a crash would.
func (d *Distribution) Kill() {
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Kill()
		// wait until the port is closed
		for i := 0; i < 200; i++ {
			c, err := net.Dial("tcp", d.Host)
			if err != nil {
				break
			}
			c.Close()
			time.Sleep(10 * time.Millisecond)
		}
	}
	if d.log != nil {
		d.log.Close()
		d.log = nil
	}
}

// Stop ends the registry.
func (d *Distribution) Stop() { d.Kill(); d.cmd = nil }
