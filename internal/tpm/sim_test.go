//go:build tpmsim

package tpm

import (
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
)

// TestSimulator runs the suite against the in-process Microsoft reference
// TPM (cgo; build tag tpmsim).
func TestSimulator(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tr := transport.FromReadWriter(sim)
	runSuite(t, func(t *testing.T) *TPM { return New(tr, nil, "simulator") })
}

// TestSimulatorKeys runs the TPM-held key suite against the simulator.
func TestSimulatorKeys(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tr := transport.FromReadWriter(sim)
	runKeySuite(t, func(t *testing.T) *TPM { return New(tr, nil, "simulator") })
}
