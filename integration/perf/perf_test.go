package perf

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// BenchmarkPath measures every figure directly and through the tunnel, then
// prints the table. Each sub-benchmark reports its figures with
// ReportMetric too.
func BenchmarkPath(b *testing.B) {
	if f := flag.Lookup("test.benchtime"); f == nil || f.Value.String() != "1x" {
		// A skipped benchmark says nothing without -v: say why here.
		const why = "BenchmarkPath skipped: run it with -benchtime 1x, every figure is one fixed workload (see the package documentation)"
		fmt.Println(why)
		b.Skip(why)
	}
	b.Setenv("TUNNEL_E2E_RACE", "0") // the agents are measured, not checked for races
	r := &rig{set: loadSettings(b), res: newTable()}
	r.rig = harness.NewRig(b)
	r.pattern = newPattern()

	b.Run("bulk", r.benchBulk)
	b.Run("rtt", func(b *testing.B) {
		b.Run("pinned", func(b *testing.B) { r.benchRTT(b, true) })
		b.Run("unpinned", func(b *testing.B) { r.benchRTT(b, false) })
	})
	b.Run("connrate", r.benchConnRate)
	b.Run("idle", r.benchIdle)
	b.Run("pgbench", r.benchPgbench)
	b.Run("scale", r.benchScale)

	r.res.print(os.Stdout, machine())
}

// rig holds what the sub-benchmarks share: the binary, its keys, the
// settings and the table they fill in.
type rig struct {
	rig     *harness.Rig
	set     settings
	res     *table
	pattern pattern
}

// settings are the sizes and durations of the workloads.
type settings struct {
	bulkBytes       int64 // each way
	rttCount        int   // round trips timed, after a tenth as many for warm-up
	connRateTime    time.Duration
	idleConns       int
	pgbenchDuration time.Duration
	scaleConns      int             // connections held at once
	scaleSeconds    int             // each echoes once a second for this long
	peers           map[column]bool // the peers to measure too, when installed
}

func loadSettings(b *testing.B) settings {
	b.Helper()
	num := func(name string, def, lo int) int {
		v := os.Getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo {
			b.Fatalf("%s=%q: want a whole number of at least %d", name, v, lo)
		}
		return n
	}
	return settings{
		bulkBytes:       int64(num("TUNNEL_PERF_BULK_MIB", 1024, 1)) << 20,
		rttCount:        num("TUNNEL_PERF_RTT_COUNT", 20000, 100),
		connRateTime:    time.Duration(num("TUNNEL_PERF_CONNRATE_SECONDS", 5, 1)) * time.Second,
		idleConns:       num("TUNNEL_PERF_IDLE_CONNS", 1000, 1),
		pgbenchDuration: time.Duration(num("TUNNEL_PERF_PGBENCH_SECONDS", 10, 1)) * time.Second,
		scaleConns:      num("TUNNEL_PERF_SCALE_CONNS", 10000, 1),
		scaleSeconds:    num("TUNNEL_PERF_SCALE_SECONDS", 60, 1),
		peers:           parsePeers(b, os.Getenv("TUNNEL_PERF_PEERS")),
	}
}

// agents is an entry/exit pair started by startAgents; applications
// connect to Entry.Addr.
type agents struct{ *harness.Tunnel }

// placement is where the processes between client and server run.
type placement int

const (
	anyCPU    placement = iota // wherever the scheduler puts them
	oneCPU                     // on CPU 0, with the client and the server
	splitCPUs                  // the client's side (entry) on CPU 0, the server's side (exit) on CPU 1, as on two hosts
)

// prefix returns the command prefix that places a process of the client's
// side of a route, or of the server's side.
func (p placement) prefix(b *testing.B, serverSide bool) []string {
	b.Helper()
	switch {
	case p == oneCPU || p == splitCPUs && !serverSide:
		return []string{tasksetPath(b), "-c", "0"}
	case p == splitCPUs:
		return []string{tasksetPath(b), "-c", "1"}
	}
	return nil
}

// startAgents starts an exit forwarding to backend, with exitArgs added to
// its flags, and an entry dialing it, placed as place says, with the status
// endpoint on when status is set, and waits for the session. At cleanup it
// fails the benchmark if either agent logged an error.
func (r *rig) startAgents(b *testing.B, backend string, place placement, status bool, exitArgs ...string) *agents {
	b.Helper()
	entry := harness.Options{Status: status, NoErrors: true, Prefix: place.prefix(b, false)}
	exit := entry
	exit.Args, exit.Prefix = exitArgs, place.prefix(b, true)
	return &agents{r.rig.StartTunnel(b, backend, exit, entry)}
}

// pids returns the process ids of both agents.
func (a *agents) pids() []int { return []int{a.Entry.Pid(), a.Exit.Pid()} }

// cpuSeconds returns the user and system CPU time the processes have used,
// from /proc/PID/stat.
func cpuSeconds(b *testing.B, pids ...int) float64 {
	b.Helper()
	var ticks int64
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatalf("reading CPU time: %v", err)
		}
		// The fields after the command name, which is in parentheses and may
		// hold spaces: state is the first, utime the 12th, stime the 13th.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		for _, i := range []int{11, 12} {
			n, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/stat: field %d is %q", pid, i+3, f[i])
			}
			ticks += n
		}
	}
	return float64(ticks) / clockTicks
}

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// rssKB returns the sum of the resident set sizes of the processes, in KiB,
// from VmRSS in /proc/PID/status.
func rssKB(b *testing.B, pids ...int) int64 {
	b.Helper()
	var sum int64
	for _, pid := range pids {
		n, err := harness.StatusKiB(pid, "VmRSS")
		if err != nil {
			b.Fatalf("reading RSS: %v", err)
		}
		sum += n
	}
	return sum
}

// checkPinned fails the benchmark unless each process may run on CPU 0
// only.
func checkPinned(b *testing.B, pids ...int) {
	b.Helper()
	for _, pid := range pids {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			b.Fatalf("reading CPU affinity: %v", err)
		}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok && strings.TrimSpace(v) != "0" {
				b.Fatalf("process %d should run on CPU 0 only, but may run on CPUs %s", pid, strings.TrimSpace(v))
			}
		}
	}
}

// machine describes the CPU and the toolchain for the table's heading.
func machine() string {
	model := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(info), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs, %s %s/%s", model, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
