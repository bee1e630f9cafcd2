package tpm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

var compare = flag.Bool("tpm.bench", false, "compare vessel's unseal with the tpm2-tools command sequence on swtpm (bench/tpm.sh)")

// countingProxy forwards swtpm's data and control ports and counts the TPM
// commands sent on the data port, so tpm2-tools can be measured the same
// way as vessel.
type countingProxy struct {
	port int
	cmds atomic.Int64
}

func newCountingProxy(t testing.TB, target int) *countingProxy {
	p := &countingProxy{port: freePortPair(t)}
	for i, count := range []bool{true, false} {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p.port+i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func(l net.Listener, to int, count bool) {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				s, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(to))
				if err != nil {
					c.Close()
					continue
				}
				go func() { io.Copy(c, s); c.Close() }()
				go func() {
					defer s.Close()
					if !count {
						io.Copy(s, c)
						return
					}
					hdr := make([]byte, 10)
					for {
						if _, err := io.ReadFull(c, hdr); err != nil {
							return
						}
						body := make([]byte, binary.BigEndian.Uint32(hdr[2:6])-10)
						if _, err := io.ReadFull(c, body); err != nil {
							return
						}
						p.cmds.Add(1)
						if _, err := s.Write(append(hdr, body...)); err != nil {
							return
						}
					}
				}()
			}
		}(l, target+i, count)
	}
	return p
}

// TestUnsealCost measures one unseal with a signed policy, vessel against
// the equivalent tpm2-tools sequence, on the same swtpm in the same run.
func TestUnsealCost(t *testing.T) {
	if !*compare {
		t.Skip("run with -tpm.bench (bench/tpm.sh)")
	}
	sw := startSwtpm(t)
	needTools(t)
	f := provision(t, sw.open)
	p := f.current(t, 1)
	td := toolsDir(t, f, p)

	const nv = 50
	var vCmds int
	start := time.Now()
	for range nv {
		tp := sw.open(t)
		if _, err := tp.Unseal(f.st, "disk", p, nil); err != nil {
			t.Fatal(err)
		}
		vCmds = tp.Commands()
		tp.Close()
	}
	vTime := time.Since(start) / nv

	proxy := newCountingProxy(t, sw.port)
	via := &swtpm{port: proxy.port, dir: sw.dir}
	const nt = 5
	start = time.Now()
	for range nt {
		toolsUnseal(t, via, td)
	}
	tTime := time.Since(start) / nt
	tCmds := float64(proxy.cmds.Load()) / nt

	fmt.Printf("unseal with a signed policy on swtpm (PolicyPCR + PolicyNV + PolicyAuthorize + PolicyOR):\n")
	fmt.Printf("  vessel:     %3d TPM commands, %8.2f ms/unseal (1 process, %d runs)\n", vCmds, ms(vTime), nv)
	fmt.Printf("  tpm2-tools: %5.1f TPM commands, %8.2f ms/unseal (%d processes, %d runs)\n", tCmds, ms(tTime), len(toolsUnsealSeq), nt)
	fmt.Printf("  ratio tpm2-tools/vessel: commands %.2fx, time %.2fx\n", tCmds/float64(vCmds), float64(tTime)/float64(vTime))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkUnsealSwtpm reports wall time and TPM commands per unseal.
func BenchmarkUnsealSwtpm(b *testing.B) {
	sw := startSwtpm(b)
	st := State{Dir: b.TempDir()}
	key := mustKey(b)
	tp, err := Open(sw.addr())
	if err != nil {
		b.Fatal(err)
	}
	defer tp.Close()
	if _, err := tp.Provision(st, &key.PublicKey, ProvisionOptions{}); err != nil {
		b.Fatal(err)
	}
	if err := tp.Seal(st, "disk", []byte("secret"), false); err != nil {
		b.Fatal(err)
	}
	pcr, err := tp.PCR7()
	if err != nil {
		b.Fatal(err)
	}
	p, err := SignPolicy(key, pcr, 1)
	if err != nil {
		b.Fatal(err)
	}
	before := tp.Commands()
	b.ResetTimer()
	for range b.N {
		if _, err := tp.Unseal(st, "disk", p, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(tp.Commands()-before)/float64(b.N), "cmds/op")
}

func mustKey(tb testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}
