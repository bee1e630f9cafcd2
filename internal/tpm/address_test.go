package tpm

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseAddress(t *testing.T) {
	good := []struct{ in, network, addr string }{
		{"/dev/tpmrm0", "", "/dev/tpmrm0"},
		{"./tpm.sock", "", "./tpm.sock"},
		{"tpm.sock", "", "tpm.sock"},
		{"device:/dev/tpm0", "", "/dev/tpm0"},
		{"swtpm:127.0.0.1:2321", "tcp", "127.0.0.1:2321"},
		{"swtpm:host=127.0.0.1,port=2331", "tcp", "127.0.0.1:2331"},
		{"swtpm:port=2341", "tcp", "localhost:2341"},
		{"swtpm:", "tcp", "localhost:2321"},
		{"swtpm:[::1]:2321", "tcp", "[::1]:2321"},
	}
	for _, c := range good {
		n, a, err := ParseAddress(c.in)
		if err != nil || n != c.network || a != c.addr {
			t.Errorf("ParseAddress(%q) = %q, %q, %v; want %q, %q", c.in, n, a, err, c.network, c.addr)
		}
	}
	bad := []struct{ in, want string }{
		{"mssim:host=localhost,port=2321", "mssim TCTI is not supported"},
		{"tabrmd:bus_name=com.intel.tss2.Tabrmd", "tabrmd TCTI is not supported"},
		{"swtpm:host=x,prot=1", `unknown key "prot"`},
		{"swtpm:localhost", "want HOST:PORT"},
		{"swtpm:localhost:99999", "not 1-65535"},
		{"swtpm:host=h,port", "not KEY=VALUE"},
		{"frob:1", `unknown kind "frob"`},
	}
	for _, c := range bad {
		_, _, err := ParseAddress(c.in)
		if !errors.Is(err, ErrAddress) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "swtpm:host=HOST,port=PORT") {
			t.Errorf("ParseAddress(%q) = %v; want ErrAddress with %q and the forms that work", c.in, err, c.want)
		}
		if _, err := Open(c.in); !errors.Is(err, ErrAddress) {
			t.Errorf("Open(%q) = %v; want ErrAddress", c.in, err)
		}
	}
}

// A TCP server that accepts and never answers (as swtpm's control port
// does to a TPM command) is refused after ProbeTimeout, not minutes later.
func TestOpenSilentServerRefusedQuickly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	old := ProbeTimeout
	ProbeTimeout = 200 * time.Millisecond
	defer func() { ProbeTimeout = old }()
	_, err = Open("swtpm:" + l.Addr().String())
	if !errors.Is(err, ErrNoTPM) || !strings.Contains(err.Error(), "no TPM response within 200ms") {
		t.Fatalf("Open(silent server) = %v; want ErrNoTPM naming the timeout", err)
	}
	var te *tpmError
	if !errors.As(err, &te) || !strings.Contains(te.hint, "control port") {
		t.Fatalf("hint %v: want one about swtpm's control port", err)
	}
}

// Against a real swtpm: the control port is refused within the probe
// timeout; the server port, in both address forms, works.
func TestOpenSwtpmPorts(t *testing.T) {
	sw := startSwtpm(t)
	_, err := Open(fmt.Sprintf("swtpm:127.0.0.1:%d", sw.port+1))
	if !errors.Is(err, ErrNoTPM) || !strings.Contains(err.Error(), "no TPM response within") {
		t.Fatalf("control port: %v; want ErrNoTPM from the probe", err)
	}
	for _, a := range []string{fmt.Sprintf("swtpm:127.0.0.1:%d", sw.port), fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", sw.port)} {
		tp, err := Open(a)
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
		if _, err := tp.Info(); err != nil {
			t.Errorf("%s: info: %v", a, err)
		}
		tp.Close()
	}
}
