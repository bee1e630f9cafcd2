package proc

import (
	"os/exec"
	"testing"
	"time"
)

func TestIdentity(t *testing.T) {
	self := Self()
	if !self.Alive() || self.StartTime == 0 {
		t.Fatalf("Self() = %+v is not alive", self)
	}
	if (ID{}).Alive() {
		t.Fatal("the zero ID is alive")
	}
	// Same pid, another start time: a different process (pid reuse).
	if (ID{Pid: self.Pid, StartTime: self.StartTime + 1}).Alive() {
		t.Fatal("a record with another start time matched this process")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child := Of(cmd.Process.Pid)
	if !child.Alive() || !Running(child.Pid) {
		t.Fatalf("child %+v not alive", child)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	if err := child.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	<-done
	if child.Alive() || Of(child.Pid) != (ID{}) {
		t.Fatalf("killed child %+v still alive", child)
	}
	if err := child.Kill(time.Second); err != nil {
		t.Fatalf("killing a dead process: %v", err)
	}
}
