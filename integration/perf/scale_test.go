package perf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// scaleDialers is how many connections are opened at a time before the
// scale run: few enough that the exit's queue of streams not yet accepted
// never fills.
const scaleDialers = 8

// scaleFDMargin is how many descriptors a process of the scale run needs
// besides one per connection: listeners, the session, the runtime's own.
const scaleFDMargin = 256

// scaleStuck is how long an echo may take before it counts as lost: far
// beyond any queueing, so that an overloaded machine makes the echoes late,
// which is reported, and only a stream the tunnel stalled is an error.
const scaleStuck = time.Minute

// scaleSlots is how many times a second the scale run's connections send,
// each time n/scaleSlots of them.
const scaleSlots = 1000

// benchScale holds r.set.scaleConns connections through one entry and one
// exit to an echo server in a process of its own, and makes each of them
// echo an rttSize message once a second for r.set.scaleSeconds, the sends
// of the connections spread evenly over the second. Every echo is checked;
// any error or wrong byte fails the benchmark. It measures the RSS of each
// agent at the end of the run, the CPU time both spent during it, their
// goroutines, the echo round trips, and the echoes per second achieved: on
// a machine that cannot keep up, a connection sends its next message as
// soon as the last echo is back, so the run takes longer and the rate falls
// below one per connection per second.
//
// The exit runs with --max-streams equal to the number of connections:
// the default (4096 per session) is a guard against a misbehaving entry,
// and this run is one entry carrying more on purpose.
func (r *rig) benchScale(b *testing.B) {
	n, secs := r.set.scaleConns, r.set.scaleSeconds
	raiseFileLimit(b, uint64(n+scaleFDMargin))
	echoAddr, echoPid := startEchoHelper(b, false)
	a := r.startAgents(b, echoAddr, anyCPU, true, "--max-streams", strconv.Itoa(n))
	pids := a.pids()
	base := []int64{rssKB(b, pids[0]), rssKB(b, pids[1])}

	conns, err := openChecked(a.Entry.Addr, n, r.pattern)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		b.Fatal(err)
	}

	cpu0 := []float64{cpuSeconds(b, pids[0]), cpuSeconds(b, pids[1]), cpuSeconds(b, os.Getpid()), cpuSeconds(b, echoPid)}
	t0 := time.Now()
	run := echoEverySecond(conns, secs, r.pattern)
	window := time.Since(t0)
	cpu := []float64{cpuSeconds(b, pids[0]), cpuSeconds(b, pids[1]), cpuSeconds(b, os.Getpid()), cpuSeconds(b, echoPid)}
	for i := range cpu {
		cpu[i] -= cpu0[i]
	}
	rss := []int64{rssKB(b, pids[0]), rssKB(b, pids[1])}
	b.ReportMetric(float64(run.failed), "errors")
	if run.err != nil {
		b.Fatalf("%d of %d connections failed while echoing once a second; the first: %v", run.failed, n, run.err)
	}
	goroutines, heap := 0, []float64{}
	for _, ag := range []*harness.Agent{a.Entry, a.Exit} {
		st := collectGarbage(b, ag)
		goroutines += st.Goroutines
		heap = append(heap, float64(st.HeapBytes)/(1<<20))
	}

	rtts := run.rttUS
	slices.Sort(rtts)
	us := func(q int) float64 { return float64(rtts[q]) }
	p50, p99, worst := us(len(rtts)/2), us(len(rtts)*99/100), us(len(rtts)-1)
	rate := float64(len(rtts)) / run.wall.Seconds()
	cpuBoth := cpu[0] + cpu[1]
	pct := 100 * cpuBoth / window.Seconds()
	mb := func(kb int64) float64 { return float64(kb) / 1024 }
	perConn := float64(rss[0]+rss[1]-base[0]-base[1]) / float64(n)

	r.res.relabel("scale-echoes", fmt.Sprintf("scale: %d connections echoing %d B every second for %d s, echoes checked", n, rttSize, secs))
	r.res.relabel("scale-rate", fmt.Sprintf("scale: echoes per second achieved (%d due)", n))
	for _, f := range []struct {
		key, unit string
		v         float64
	}{
		{"scale-echoes", "echoes", float64(len(rtts))},
		{"scale-rate", "echoes/s", rate},
		{"scale-rtt-p50", "rtt-p50-ms", p50 / 1e3},
		{"scale-rtt-p99", "rtt-p99-ms", p99 / 1e3},
		{"scale-rss-entry", "entry-RSS-MB", mb(rss[0])},
		{"scale-rss-exit", "exit-RSS-MB", mb(rss[1])},
		{"scale-rss", "RSS-MB", mb(rss[0] + rss[1])},
		{"scale-rss-conn", "KB/conn", perConn},
		{"scale-cpu", "cpu-s", cpuBoth},
		{"scale-cpu-pct", "cpu-%-of-core", pct},
		{"scale-goroutines", "goroutines", float64(goroutines)},
	} {
		b.ReportMetric(f.v, f.unit)
		r.res.set(f.key, tunnel, f.v)
	}
	b.Logf("%d connections, %d echoes in %v (%.0f per second), none failed; sends at most %v behind schedule; "+
		"round trip p50 %.0f µs, p99 %.0f µs, worst %.0f µs; "+
		"RSS entry %.1f MB, exit %.1f MB (%.1f and %.1f MB before the connections; live heap after the run %.1f and %.1f MB); "+
		"CPU entry %.2f s, exit %.2f s (%.1f%% of one core together; the client %.2f s, the echo server %.2f s); "+
		"goroutines of both %d",
		n, len(rtts), run.wall.Round(time.Millisecond), rate, run.lag.Round(time.Millisecond), p50, p99, worst,
		mb(rss[0]), mb(rss[1]), mb(base[0]), mb(base[1]), heap[0], heap[1], cpu[0], cpu[1], pct, cpu[2], cpu[3], goroutines)
	b.ReportMetric(0, "ns/op")
}

// raiseFileLimit raises this process's soft open-file limit to its hard
// limit (the agents and the echo server, started after, inherit it), and
// skips the benchmark, or fails it in CI, when the hard limit is below
// need.
func raiseFileLimit(b *testing.B, need uint64) {
	b.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("reading the open-file limit: %v", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatalf("raising the soft open-file limit to the hard limit %d: %v", lim.Max, err)
		}
	}
	if lim.Max < need {
		why := fmt.Sprintf("an open-file limit of at least %d for the scale run (the hard limit is %d): "+
			"raise it (as root: ulimit -n %d; in a container: --ulimit nofile=%d:%d) or set TUNNEL_PERF_SCALE_CONNS lower",
			need, lim.Max, need, need, need)
		fmt.Println("BenchmarkPath/scale needs " + why) // a skip says nothing without -v
		harness.RequireOrSkip(b, why, false)
	}
}

// scaleMessage fills msg (rttSize bytes) with the message connection i
// sends in round k: the pattern at an offset of its own, with i and k in
// the first eight bytes, so that no two messages are the same.
func scaleMessage(msg []byte, p pattern, i, k int) {
	copy(msg, p.at((int64(i)<<16+int64(k)+1)*rttSize, rttSize))
	binary.LittleEndian.PutUint32(msg, uint32(i))
	binary.LittleEndian.PutUint32(msg[4:], uint32(k))
}

// echoChecked sends msg on c and checks its echo, reading into got.
func echoChecked(c net.Conn, msg, got []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return errNotEcho
	}
	return nil
}

// openChecked opens n connections to addr, scaleDialers at a time, and
// makes each echo one message (round -1) so that it is known to reach the
// server. It returns the connections opened so far with the first error.
func openChecked(addr string, n int, p pattern) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, scaleDialers)
	for range scaleDialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, got := make([]byte, rttSize), make([]byte, rttSize)
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					errs <- fmt.Errorf("opening connection %d of %d: %w", i+1, n, err)
					return
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(30 * time.Second))
				scaleMessage(msg, p, i, -1)
				if err := echoChecked(c, msg, got); err != nil {
					errs <- fmt.Errorf("connection %d of %d, first echo: %w", i+1, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	open := slices.DeleteFunc(conns, func(c net.Conn) bool { return c == nil })
	return open, <-errs
}

// scaleRun is the outcome of echoEverySecond.
type scaleRun struct {
	rttUS  []uint32      // the round trips, in µs
	wall   time.Duration // from the first send due to the last echo
	lag    time.Duration // the most a send was behind its schedule
	failed int           // connections that failed
	err    error         // the first failure
}

// echoEverySecond makes every connection echo one checked message a second,
// secs times, in one goroutine per connection. The sends are spread over
// the second in scaleSlots slots, connection i sending in slot
// i*scaleSlots/len(conns): a few connections at a time, as independent
// clients would, and few enough wake-ups that the client's own timers do
// not take the CPU the agents need. When an echo comes back after the next
// send was due, that send goes at once. A connection that fails stops.
func echoEverySecond(conns []net.Conn, secs int, p pattern) scaleRun {
	n := len(conns)
	rtts := make([]uint32, n*secs)
	var failed, lag atomic.Int64
	var once sync.Once
	var first error
	start := time.Now().Add(100 * time.Millisecond)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, got := make([]byte, rttSize), make([]byte, rttSize)
			phase := time.Duration(i*scaleSlots/n) * time.Second / scaleSlots
			var deadline time.Time
			worst := time.Duration(0)
			defer func() {
				for l := lag.Load(); int64(worst) > l && !lag.CompareAndSwap(l, int64(worst)); l = lag.Load() {
				}
			}()
			for k := range secs {
				due := start.Add(time.Duration(k)*time.Second + phase)
				time.Sleep(time.Until(due))
				scaleMessage(msg, p, i, k)
				t := time.Now()
				worst = max(worst, t.Sub(due))
				if deadline.Sub(t) < scaleStuck/2 { // moved seldom: each move costs a timer update
					deadline = t.Add(scaleStuck)
					c.SetDeadline(deadline)
				}
				if err := echoChecked(c, msg, got); err != nil {
					failed.Add(1)
					once.Do(func() { first = fmt.Errorf("connection %d of %d, second %d: %w", i+1, n, k+1, err) })
					return
				}
				rtts[i*secs+k] = uint32(time.Since(t).Microseconds())
			}
		}()
	}
	wg.Wait()
	return scaleRun{rttUS: rtts, wall: time.Since(start), lag: time.Duration(lag.Load()),
		failed: int(failed.Load()), err: first}
}
