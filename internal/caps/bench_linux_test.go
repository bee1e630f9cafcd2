package caps

import (
	"os"
	"os/exec"
	"sort"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTracing is the tracer's overhead on a syscall-heavy workload
// with many capability checks: a shell starting /bin/true 200 times (each
// execve and its mmaps make no-audit CAP_SYS_ADMIN checks, every one a
// ring-buffer record when traced). Each iteration runs the workload three
// ways, interleaved so that load from elsewhere hits all three alike:
// untraced (no tracer), traced (its cgroup is traced) and elsewhere (a
// tracer is attached for another cgroup: what every other process pays
// while a learning run is traced). Reported: the ratios to untraced.
func BenchmarkTracing(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		b.Skip("busybox-static is not installed")
	}
	if err := CanTrace(); err != nil {
		b.Skipf("BPF tracing is not permitted or the tracepoint is missing here: %v", err)
	}
	cg, err := NewCgroup("vessel-caps-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer cg.Remove()
	other, err := NewCgroup("vessel-caps-bench-other")
	if err != nil {
		b.Fatal(err)
	}
	defer other.Remove()
	fd, err := syscall.Open(cg.Dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer syscall.Close(fd)
	// workload returns the wall time and the CPU time (user+system of the
	// shell and its children: the BPF program runs in their syscalls), which
	// load from other processes disturbs less.
	workload := func() [2]time.Duration {
		cmd := exec.Command("busybox", "sh", "-c", "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		wall := time.Since(start)
		return [2]time.Duration{wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	}
	// Per iteration ratios; their medians are reported.
	var wallT, wallE, cpuT, cpuE []float64
	var base time.Duration
	events := 0
	for i := 0; i < b.N; i++ {
		u := workload()
		base += u[1]
		tr, err := NewTracer(cg.ID, TraceOptions{})
		if err != nil {
			b.Fatal(err)
		}
		t := workload()
		trace, err := tr.Stop()
		if err != nil {
			b.Fatal(err)
		}
		for _, ev := range trace.Events {
			events += ev.Count
		}
		tr, err = NewTracer(other.ID, TraceOptions{})
		if err != nil {
			b.Fatal(err)
		}
		e := workload()
		if _, err := tr.Stop(); err != nil {
			b.Fatal(err)
		}
		wallT, wallE = append(wallT, float64(t[0])/float64(u[0])), append(wallE, float64(e[0])/float64(u[0]))
		cpuT, cpuE = append(cpuT, float64(t[1])/float64(u[1])), append(cpuE, float64(e[1])/float64(u[1]))
	}
	b.ReportMetric(float64(base.Milliseconds())/float64(b.N), "untraced-cpu-ms/op")
	b.ReportMetric(median(cpuT), "traced/untraced-cpu")
	b.ReportMetric(median(cpuE), "elsewhere/untraced-cpu")
	b.ReportMetric(median(wallT), "traced/untraced-wall")
	b.ReportMetric(median(wallE), "elsewhere/untraced-wall")
	b.ReportMetric(float64(events)/float64(b.N), "events/op")
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
