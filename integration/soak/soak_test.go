package soak

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
	"github.com/tunnel-dev/tunnel/tunnel"
)

func TestMain(m *testing.M) { harness.Main(m) }

// Load shape.
const (
	// concurrency is how many client connections are open at once, each
	// worker opening its next as soon as the last one ends.
	concurrency = 1000
	// rampUp spreads the workers' first dials, so that the load starts as
	// a steady churn rather than one burst of SYNs at the entry's backlog.
	rampUp = time.Second
	// maxPayload bounds the random payload of one connection.
	maxPayload = 16 << 10
	// connTimeout bounds one connection's whole exchange.
	connTimeout = 30 * time.Second
	// abandonPercent of connections are reset (SO_LINGER 0) mid-exchange;
	// halfClosePercent end with CloseWrite and read the backend's digest;
	// the rest read their echo and close both ways at once.
	abandonPercent   = 3
	halfClosePercent = 50
)

// Settling and tolerances, checked against the idle baseline.
const (
	settleTimeout = 15 * time.Second
	// goroutineSlack: an idle agent runs a fixed set of goroutines
	// (session, keepalive, status server); timers and the status request
	// being served can add a few. A leak of even 1% of the connections
	// (hundreds) is far above it.
	goroutineSlack = 10
	// fdSlack: the status request's own socket, and the runtime's
	// internal descriptors; one leaked socket per 0.01% of connections
	// would already be above it.
	fdSlack = 10
	// heapSlack: heap is read from /status?gc=1, after a collection, so
	// it counts live memory; repeated reads while settling also empty the
	// pool of 64 KiB copy buffers (sync.Pool drops its items over two
	// collections). What remains is the runtime's own growth and a few
	// buffers in flight; a leak of even 1 KiB per connection over the
	// soak's 10^4 to 10^5 connections is above it.
	heapSlack = 32 << 20
)

// durationEnv sets the soak's load duration (a Go duration, e.g. "20s");
// the default is 60s, and in CI (see harness.InCI) it is never less.
const durationEnv = "TUNNEL_SOAK_DURATION"

func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	const full = 60 * time.Second
	d := full
	if v := os.Getenv(durationEnv); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive duration such as 20s", durationEnv, v)
		}
	}
	if harness.InCI() && d < full {
		t.Logf("%s=%v raised to %v: CI always soaks for the full duration", durationEnv, d, full)
		d = full
	}
	return d
}

// TestSoak runs concurrency connections at a time through an entry/exit
// pair to a hash-echo backend for the soak duration, then checks that no
// connection that was not deliberately abandoned failed, that every
// connection was a stream at both agents, and that both agents settle back
// to their idle goroutines, descriptors, heap and zero open streams.
func TestSoak(t *testing.T) {
	duration := soakDuration(t)
	raiseFileLimit(t, 4*concurrency+1024)
	backend := harness.StartHashEcho(t)
	// The agents log warnings and errors only: at info level they would
	// log a line per connection, hundreds of thousands in a soak, all kept
	// by the harness. A connection its client has closed keeps its stream
	// at the exit until the backend has answered the FIN, so under this
	// churn the exit's open streams peak about 10% above the client
	// concurrency: within the default --max-streams (4096).
	quiet := harness.Options{Quiet: true, NoErrors: true}
	tun := harness.NewRig(t).StartTunnel(t, backend.Addr(), quiet, quiet)
	entryAddr := tun.Entry.Addr
	agents := []*agent{{tun.Entry}, {tun.Exit}}

	// Warm up: one connection through, so that lazily made state (the
	// buffer pool, the backend dialer) exists before the baseline; then
	// let it go idle.
	if err := harness.Exchange(entryAddr, 4096, 1, connTimeout); err != nil {
		t.Fatalf("warm-up exchange through the entry: %v", err)
	}
	time.Sleep(time.Second)
	base := make([]tunnel.Stats, len(agents))
	baseRSS := make([]int64, len(agents))
	for i, a := range agents {
		base[i] = a.stats(t)
		baseRSS[i] = a.procKiB(t, "VmRSS")
		t.Logf("%s baseline: %s, VmRSS %d KiB", a.Role, format(base[i]), baseRSS[i])
		if base[i].Sessions != 1 || base[i].Streams != 0 {
			t.Fatalf("%s baseline: %d sessions and %d open streams, want 1 and 0", a.Role, base[i].Sessions, base[i].Streams)
		}
	}

	t.Logf("soak: %d concurrent connections for %v (tunnel race-built: %v)", concurrency, duration, harness.RaceBuild())
	tl := runLoad(t, entryAddr, duration, agents)
	t.Logf("soak done: %d connections in %v (%.0f/s): %d half-closed, %d full-closed, %d abandoned with RST; "+
		"%d errors, %d dial errors; %d MiB echoed",
		tl.dials.Load(), tl.elapsed.Round(time.Millisecond), float64(tl.dials.Load())/tl.elapsed.Seconds(),
		tl.halfClosed.Load(), tl.fullClosed.Load(), tl.abandoned.Load(),
		tl.errs.Load(), tl.dialErrs.Load(), tl.bytes.Load()>>20)
	for _, e := range tl.errorSamples() {
		t.Errorf("connection failed: %s", e)
	}
	if n := tl.errs.Load() + tl.dialErrs.Load(); n > 0 {
		t.Errorf("%d of %d connections that were not abandoned failed", n, tl.dials.Load()+tl.dialErrs.Load()-tl.abandoned.Load())
	}
	if tl.dials.Load() < concurrency {
		t.Errorf("only %d connections in %v: the load never reached its concurrency", tl.dials.Load(), duration)
	}

	// Settle: poll until every agent is back within tolerance, or give up
	// after settleTimeout and report what is still above it.
	var after []tunnel.Stats
	settleStart := time.Now()
	for {
		after = after[:0]
		settled := true
		for i, a := range agents {
			s := a.stats(t)
			after = append(after, s)
			settled = settled && len(overBaseline(base[i], s)) == 0
		}
		if settled || time.Since(settleStart) > settleTimeout {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("settled after %v", time.Since(settleStart).Round(time.Millisecond))
	for i, a := range agents {
		s := after[i]
		t.Logf("%s after:    %s, VmRSS %d KiB (peak VmHWM %d KiB)", a.Role, format(s), a.procKiB(t, "VmRSS"), a.procKiB(t, "VmHWM"))
		for _, problem := range overBaseline(base[i], s) {
			t.Errorf("%s did not settle within %v: %s", a.Role, settleTimeout, problem)
		}
		if s.Sessions != 1 || s.HandshakeFailures != base[i].HandshakeFailures {
			t.Errorf("%s: %d sessions and %d handshake failures after the soak, want 1 and %d: the session was lost",
				a.Role, s.Sessions, s.HandshakeFailures, base[i].HandshakeFailures)
		}
		// Every accepted application connection became a stream at both
		// agents, abandoned ones included.
		if got := s.StreamsTotal - base[i].StreamsTotal; got != tl.dials.Load() {
			t.Errorf("%s counted %d new streams, want one per connection: %d", a.Role, got, tl.dials.Load())
		}
	}
	for _, a := range agents {
		// Error lines fail the test (Options.NoErrors); warnings are
		// logged, not failed: an abandoned connection may legitimately
		// cause one.
		var warns []string
		for _, l := range a.Logs() {
			if harness.Level("warn")(l) {
				warns = append(warns, l.Raw)
			}
		}
		if len(warns) > 0 {
			t.Logf("%s logged %d warnings, the first: %s", a.Role, len(warns), warns[0])
		}
	}
}

// overBaseline lists how s exceeds the tolerances above base.
func overBaseline(base, s tunnel.Stats) []string {
	var p []string
	if s.Streams != 0 {
		p = append(p, fmt.Sprintf("%d streams still open, want 0", s.Streams))
	}
	if s.Goroutines > base.Goroutines+goroutineSlack {
		p = append(p, fmt.Sprintf("%d goroutines, baseline %d + %d", s.Goroutines, base.Goroutines, goroutineSlack))
	}
	if s.OpenFDs > base.OpenFDs+fdSlack {
		p = append(p, fmt.Sprintf("%d open descriptors, baseline %d + %d", s.OpenFDs, base.OpenFDs, fdSlack))
	}
	if s.HeapBytes > base.HeapBytes+heapSlack {
		p = append(p, fmt.Sprintf("heap %d MiB, baseline %d MiB + %d MiB", s.HeapBytes>>20, base.HeapBytes>>20, heapSlack>>20))
	}
	return p
}

func format(s tunnel.Stats) string {
	return fmt.Sprintf("goroutines %d, open fds %d, heap %.1f MiB, sessions %d, streams %d (total %d)",
		s.Goroutines, s.OpenFDs, float64(s.HeapBytes)/(1<<20), s.Sessions, s.Streams, s.StreamsTotal)
}

// tally counts the load's connections. Its fields are updated by the
// workers concurrently.
type tally struct {
	dials, dialErrs, errs             atomic.Int64
	halfClosed, fullClosed, abandoned atomic.Int64
	bytes                             atomic.Int64  // payload bytes echoed and verified
	elapsed                           time.Duration // set once the workers are done
	mu                                sync.Mutex
	samples                           []string // the first few errors
}

func (tl *tally) fail(kind string, err error) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.samples) < 10 {
		tl.samples = append(tl.samples, kind+": "+err.Error())
	}
}

func (tl *tally) errorSamples() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]string(nil), tl.samples...)
}

// runLoad keeps concurrency connections going through addr until duration
// has passed, logging progress and the agents' open streams every ten
// seconds, and returns the counts once every worker has finished.
func runLoad(t *testing.T, addr string, duration time.Duration, agents []*agent) *tally {
	tl := &tally{}
	start := time.Now()
	end := start.Add(duration)
	// If the test fails early, the workers stop before the agents are
	// killed.
	ctx, cancel := context.WithDeadline(context.Background(), end)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(time.Duration(w) * rampUp / concurrency):
			case <-ctx.Done():
			}
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			for ctx.Err() == nil {
				oneConn(addr, rng, tl)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			tl.elapsed = time.Since(start)
			return tl
		case <-tick.C:
			// Progress only: a slow answer under full load is not a failure.
			var open []string
			for _, a := range agents {
				if s, err := a.tryStats(""); err != nil {
					open = append(open, fmt.Sprintf("%s: %v", a.Role, err))
				} else {
					open = append(open, fmt.Sprintf("%s %d streams, %d goroutines", a.Role, s.Streams, s.Goroutines))
				}
			}
			t.Logf("soak %v: %d connections, %d errors; %s", time.Since(start).Round(time.Second),
				tl.dials.Load(), tl.errs.Load()+tl.dialErrs.Load(), strings.Join(open, "; "))
		}
	}
}

// oneConn opens one connection through addr and runs one exchange of a
// kind picked at random, counting the outcome in tl.
func oneConn(addr string, rng *rand.Rand, tl *tally) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		tl.dialErrs.Add(1)
		tl.fail("dial", err)
		time.Sleep(100 * time.Millisecond) // do not spin on a dead entry
		return
	}
	tl.dials.Add(1)
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(connTimeout))
	size := 1 + rng.IntN(maxPayload)
	seed := rng.Uint64()
	switch pick := rng.IntN(100); {
	case pick < abandonPercent:
		abandon(tc, size, seed, rng)
		tl.abandoned.Add(1)
	case pick < abandonPercent+halfClosePercent:
		if err := harness.HashEchoExchange(tc, int64(size), seed); err != nil {
			tl.errs.Add(1)
			tl.fail("half-close exchange", err)
			return
		}
		tl.halfClosed.Add(1)
		tl.bytes.Add(int64(size))
	default:
		// The echo, then both directions closed at once: the backend's
		// digest, sent after the client's EOF, is never read.
		if err := harness.EchoBack(tc, payload(size, seed)); err != nil {
			tl.errs.Add(1)
			tl.fail("full-close exchange", err)
			return
		}
		tl.fullClosed.Add(1)
		tl.bytes.Add(int64(size))
	}
}

// payload returns size pseudo-random bytes derived from seed.
func payload(size int, seed uint64) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	p := make([]byte, size)
	rand.NewChaCha8(s).Read(p)
	return p
}

// abandon writes part of the payload, sometimes reads part of the echo,
// and resets the connection (SO_LINGER 0): an application that crashes
// mid-exchange. Its errors do not matter.
func abandon(c *net.TCPConn, size int, seed uint64, rng *rand.Rand) {
	p := payload(size, seed)
	c.Write(p[:rng.IntN(size+1)])
	if rng.IntN(2) == 0 {
		c.SetReadDeadline(time.Now().Add(time.Duration(rng.IntN(5)) * time.Millisecond))
		io.ReadFull(c, make([]byte, 1+rng.IntN(size)))
	}
	c.SetLinger(0)
	c.Close()
}

// agent is a running entry or exit with its status endpoint.
type agent struct{ *harness.Agent }

// stats reads the agent's /status after a collection, failing the test if it cannot.
func (a *agent) stats(t *testing.T) tunnel.Stats {
	t.Helper()
	s, err := a.tryStats("?gc=1")
	if err != nil {
		t.Fatalf("%s: %v", a.Role, err)
	}
	return s
}

// tryStats reads the agent's /status with the given query.
func (a *agent) tryStats(query string) (tunnel.Stats, error) {
	var s tunnel.Stats
	body, err := a.Get("/status" + query)
	if err != nil {
		return s, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("GET /status: decoding: %w", err)
	}
	if s.Role != a.Role || s.OpenFDs < 0 {
		return s, fmt.Errorf("GET /status: role %q, open_fds %d: want role %q and a descriptor count", s.Role, s.OpenFDs, a.Role)
	}
	return s, nil
}

// procKiB returns a "kB" field of /proc/PID/status, such as VmRSS.
func (a *agent) procKiB(t *testing.T, field string) int64 {
	t.Helper()
	n, err := harness.StatusKiB(a.Pid(), field)
	if err != nil {
		t.Fatalf("%s: %v", a.Role, err)
	}
	return n
}

// raiseFileLimit raises this process's RLIMIT_NOFILE to at least n, and
// makes the processes it starts later (the agents) inherit it: the Go
// runtime raises its own soft limit at start but restores the original one
// in child processes unless the program calls Setrlimit itself.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	lim.Cur = max(lim.Cur, n)
	lim.Max = max(lim.Max, n) // root may raise the hard limit
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raising RLIMIT_NOFILE to %d for %d concurrent connections: %v", n, concurrency, err)
	}
}
