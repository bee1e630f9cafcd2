package registrytest

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// A registry killed from one goroutine (as a test's proxy does in the
// middle of a transfer) and started again from another, which learns of
// the kill only through the network, as the test does: -race fails this on
// unguarded state. Kill returns only once the port is closed, and the
// restarted registry answers on the same port.
func TestKillFromAnotherGoroutineThenStart(t *testing.T) {
	d := Start(t, Options{})
	for i := 0; i < 2; i++ {
		go d.Kill()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.Dial("tcp", d.Host)
			if err != nil {
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				t.Fatal("the registry still answers 10s after Kill")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + d.Host + "/v2/")
		if err != nil {
			t.Fatalf("after restart %d: %v", i+1, err)
		}
		resp.Body.Close()
	}
	d.Kill()
	d.Kill() // idempotent
	if c, err := net.Dial("tcp", d.Host); err == nil {
		c.Close()
		t.Fatal("the registry still answers after Kill returned")
	}
}
