package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultDevice is the kernel's TPM resource manager device.
const DefaultDevice = "/dev/tpmrm0"

// TPM is an open connection to a TPM. It is not safe for concurrent use.
// It counts the commands sent, for benchmarks and tests.
type TPM struct {
	tr     transport.TPM
	closer io.Closer
	where  string
	cmds   int
	byCC   map[tpm2.TPMCC]int
	// live and maxLive count transient objects this connection loaded and
	// has not flushed (sessions are not counted).
	live, maxLive int
	busy          time.Duration // time spent in Send
}

// New wraps an already open transport (for example an in-process simulator).
// Close closes c if it is not nil.
func New(t transport.TPM, c io.Closer, where string) *TPM {
	return &TPM{tr: t, closer: c, where: where, byCC: map[tpm2.TPMCC]int{}}
}

// Open opens the TPM named by dev:
//
//	/dev/tpmrm0, /dev/tpm0   a character device
//	swtpm:HOST:PORT          swtpm's (or any raw TPM command) TCP server
//	swtpm:host=H,port=P      the same in tpm2-tools' TCTI form (TPM2TOOLS_TCTI)
//	device:PATH              a device in tpm2-tools' form
//	PATH                     a unix socket speaking raw TPM commands (swtpm --server type=unixio)
//
// An empty dev means DefaultDevice. Failure wraps ErrNoTPM; an address
// vessel cannot use (another TCTI, a malformed one) wraps ErrAddress at
// once. A TCP TPM must answer a first command within ProbeTimeout: swtpm's
// control port, given by mistake, never does.
func Open(dev string) (*TPM, error) {
	if dev == "" {
		dev = DefaultDevice
	}
	network, addr, err := ParseAddress(dev)
	if err != nil {
		return nil, err
	}
	if network == "tcp" {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, &tpmError{op: "open TPM " + dev, sentinel: ErrNoTPM, err: err,
				hint: "is swtpm running with `--server type=tcp,port=PORT`?"}
		}
		st := &streamTPM{c: c}
		if err := st.probe(); err != nil {
			c.Close()
			return nil, &tpmError{op: "open TPM " + dev, sentinel: ErrNoTPM, err: err,
				hint: "is this swtpm's --ctrl port? give its --server port (swtpm:HOST:PORT, often the control port minus 1)"}
		}
		return New(st, c, dev), nil
	}
	dev = addr
	fi, err := os.Stat(dev)
	if err != nil {
		return nil, &tpmError{op: "open TPM " + dev, sentinel: ErrNoTPM, err: err,
			hint: "does this machine have a TPM 2.0 enabled in firmware? select another with --tpm (/dev/tpm0, swtpm:HOST:PORT, a unix socket)"}
	}
	if fi.Mode()&os.ModeSocket != 0 {
		c, err := net.DialTimeout("unix", dev, 5*time.Second)
		if err != nil {
			return nil, &tpmError{op: "open TPM " + dev, sentinel: ErrNoTPM, err: err}
		}
		return New(&streamTPM{c: c}, c, dev), nil
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, &tpmError{op: "open TPM " + dev, sentinel: ErrNoTPM, err: err,
			hint: "run as root, or as a member of the tss group; /dev/tpm0 is exclusive: prefer /dev/tpmrm0"}
	}
	return New(transport.FromReadWriteCloser(f), nil, dev), nil
}

// Close closes the connection. It does not flush anything: every function
// of this package flushes what it loaded before it returns.
func (t *TPM) Close() error {
	if t.closer != nil {
		return t.closer.Close()
	}
	if c, ok := t.tr.(transport.TPMCloser); ok {
		return c.Close()
	}
	return nil
}

// String names the TPM as it was opened.
func (t *TPM) String() string { return t.where }

// Commands returns how many TPM commands were sent so far.
func (t *TPM) Commands() int { return t.cmds }

// Busy returns the time spent waiting for the TPM's answers so far.
func (t *TPM) Busy() time.Duration { return t.busy }

// MaxLoaded returns the largest number of transient objects this
// connection had loaded at once.
func (t *TPM) MaxLoaded() int { return t.maxLive }

// Send implements transport.TPM, counting commands and loaded objects.
func (t *TPM) Send(cmd []byte) ([]byte, error) {
	t.cmds++
	defer func(start time.Time) { t.busy += time.Since(start) }(time.Now())
	var cc tpm2.TPMCC
	if len(cmd) >= 10 {
		cc = tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
		t.byCC[cc]++
	}
	rsp, err := t.tr.Send(cmd)
	// TPM_RC_RETRY, _YIELDED and _TESTING: the command did not start;
	// send the same bytes again (sessions are unchanged), backing off.
	for wait := time.Millisecond; err == nil && len(rsp) >= 10 && wait < 4*time.Second; wait *= 2 {
		rc := binary.BigEndian.Uint32(rsp[6:10])
		if rc != uint32(tpm2.TPMRCRetry) && rc != uint32(tpm2.TPMRCYielded) && rc != uint32(tpm2.TPMRCTesting) {
			break
		}
		time.Sleep(wait)
		rsp, err = t.tr.Send(cmd)
	}
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	switch cc {
	case tpm2.TPMCCLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreateLoaded, tpm2.TPMCCContextLoad:
		if len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[10:14])>>24 == 0x80 {
			t.live++
			t.maxLive = max(t.maxLive, t.live)
		}
	case tpm2.TPMCCFlushContext:
		if len(cmd) >= 14 && binary.BigEndian.Uint32(cmd[10:14])>>24 == 0x80 {
			t.live--
		}
	}
	return rsp, nil
}

// ErrAddress is wrapped by Open and ParseAddress for a TPM address vessel
// cannot use.
var ErrAddress = errors.New("unusable TPM address")

// ProbeTimeout bounds the first exchange with a TCP TPM; IOTimeout bounds
// every later read and write (key generation in swtpm takes seconds, not
// minutes).
var (
	ProbeTimeout = 3 * time.Second
	IOTimeout    = 30 * time.Second
)

// ParseAddress reads a TPM address (see Open) into a network ("tcp", or
// "" for a path: a device or a unix socket) and an address. Forms of
// tpm2-tools' TCTI strings that vessel speaks are translated; the others
// are refused naming the forms that work.
func ParseAddress(dev string) (network, addr string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("TPM address %q: %w: %s (want /dev/tpmrm0, /dev/tpm0, a unix socket path, swtpm:HOST:PORT or swtpm:host=HOST,port=PORT)", dev, ErrAddress, why)
	}
	kind, rest, hasColon := strings.Cut(dev, ":")
	if !hasColon || strings.HasPrefix(dev, "/") || strings.HasPrefix(dev, ".") {
		return "", dev, nil
	}
	switch kind {
	case "device":
		if rest == "" {
			return "", DefaultDevice, nil
		}
		return "", rest, nil
	case "swtpm":
		if rest == "" {
			return "tcp", "localhost:2321", nil // tpm2-tools' default
		}
		if strings.Contains(rest, "=") {
			host, port := "localhost", "2321"
			for _, kv := range strings.Split(rest, ",") {
				k, v, ok := strings.Cut(kv, "=")
				switch {
				case !ok:
					return bad(fmt.Sprintf("%q is not KEY=VALUE", kv))
				case k == "host":
					host = v
				case k == "port":
					port = v
				default:
					return bad(fmt.Sprintf("unknown key %q (host and port are known)", k))
				}
			}
			rest = net.JoinHostPort(host, port)
		}
		host, port, err := net.SplitHostPort(rest)
		if err != nil || host == "" {
			return bad("want HOST:PORT after swtpm:")
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return bad(fmt.Sprintf("port %q is not 1-65535", port))
		}
		return "tcp", rest, nil
	case "mssim", "tabrmd", "libtpms", "cmd", "spi-helper", "spi-ltt2go", "spi-ftdi", "i2c-helper":
		return bad(fmt.Sprintf("the %s TCTI is not supported by vessel", kind))
	}
	return bad(fmt.Sprintf("unknown kind %q", kind))
}

// probe sends TPM2_GetRandom(1) and waits up to ProbeTimeout for a
// well-formed response (any response code: a TPM that needs Startup still
// answers).
func (s *streamTPM) probe() error {
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 1}
	if _, err := s.exchange(cmd, ProbeTimeout); err != nil {
		return fmt.Errorf("no TPM response within %s: %w", ProbeTimeout, err)
	}
	return nil
}

// streamTPM speaks raw TPM commands over a stream (swtpm's TCP or unix
// socket server): write a command, read a response framed by its header.
type streamTPM struct{ c net.Conn }

const maxResponse = 64 << 10

func (s *streamTPM) Send(cmd []byte) ([]byte, error) { return s.exchange(cmd, IOTimeout) }

func (s *streamTPM) exchange(cmd []byte, timeout time.Duration) ([]byte, error) {
	if err := s.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if _, err := s.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("send TPM command: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.c, hdr); err != nil {
		return nil, fmt.Errorf("read TPM response: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > maxResponse {
		return nil, errors.New("read TPM response: bad size in header")
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.c, rsp[10:]); err != nil {
		return nil, fmt.Errorf("read TPM response: %w", err)
	}
	return rsp, nil
}
