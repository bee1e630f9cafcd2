// Package faultpoint lets crash tests stop a vessel process at a named
// moment and kill it there (kill -9 at chosen moments): the tests of
// container recovery, runtime probes and `vessel down` use it.
//
// It does nothing unless the environment variable VESSEL_FAULT_PAUSE
// names the point reached. Then the process writes its pid to the file
// named by VESSEL_FAULT_FILE (if set) and blocks forever, waiting to be
// killed. Production never sets these variables; they are documented in
// docs/run.md so that nobody is surprised by a paused vessel.
package faultpoint

import (
	"os"
	"strconv"
	"time"
)

// Names of the points (one place, so that tests and code agree).
const (
	// ContainerCreated: the container's state directory and owner record
	// exist; nothing is mounted yet.
	ContainerCreated = "container-created"
	// RuntimeStarted: the runtime process (runc run) has been started
	// and recorded, but may not have created the container yet.
	RuntimeStarted = "runtime-started"
	// ProbeCreated: the runtime probe container of Detect exists.
	ProbeCreated = "probe-created"
	// UpdateBeforeCommit: vessel update staged everything but has not
	// replaced the slot record; UpdateAfterCommit: it has (before gc, and
	// in a confirm before the anti-rollback record).
	UpdateBeforeCommit = "update-before-commit"
	UpdateAfterCommit  = "update-after-commit"
)

// Pause blocks forever if VESSEL_FAULT_PAUSE is name.
func Pause(name string) {
	if os.Getenv("VESSEL_FAULT_PAUSE") != name {
		return
	}
	if f := os.Getenv("VESSEL_FAULT_FILE"); f != "" {
		_ = os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	}
	for {
		time.Sleep(time.Hour)
	}
}
