package churn

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestMain builds the agents without the race detector unless
// TUNNEL_E2E_RACE is set: see the package comment.
func TestMain(m *testing.M) {
	if _, set := os.LookupEnv("TUNNEL_E2E_RACE"); !set {
		os.Setenv("TUNNEL_E2E_RACE", "0")
	}
	harness.Main(m)
}

const (
	// baseConns is where the reference heap is read: by then every
	// structure that grows to a steady size under this load has.
	baseConns = 20_000
	// defaultConns is how many connections the check pushes in all.
	defaultConns = 300_000
	// heapSlack is how far a live heap may move from its reference.
	heapSlack = 1 << 20
	// workers run one connection at a time each.
	workers = 32
	// maxPayload bounds one connection's random payload.
	maxPayload = 4 << 10
	// abandonPercent of connections are reset (SO_LINGER 0) mid-exchange
	// and fullClosePercent close both ways after reading their echo;
	// the rest half-close and read the backend's digest too.
	abandonPercent   = 5
	fullClosePercent = 30
)

// connsEnv raises the number of connections for a longer run.
const connsEnv = "TUNNEL_CHURN_CONNECTIONS"

func totalConns(t *testing.T) int64 {
	t.Helper()
	v := os.Getenv(connsEnv)
	if v == "" {
		return defaultConns
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < defaultConns {
		t.Fatalf("%s=%q: want a number of connections of at least %d", connsEnv, v, defaultConns)
	}
	return n
}

// TestHeapFlatUnderChurn pushes the connections through an entry and an
// exit, pausing after baseConns to read each agent's live heap, and checks
// that at the end both are within heapSlack of it, that no connection
// failed, and that the entry still has a session up.
func TestHeapFlatUnderChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes 300,000 connections through the agents: not in -short")
	}
	total := totalConns(t)
	backend := harness.StartHashEcho(t)
	// The agents log warnings and errors only: a line per connection at
	// info would be kept by the harness, hundreds of thousands of them.
	quiet := harness.Options{Quiet: true, NoErrors: true}
	tun := harness.NewRig(t).StartTunnel(t, backend.Addr(), quiet, quiet)
	entry := &agent{tun.Entry}
	agents := []*agent{entry, {tun.Exit}}

	l := &load{addr: tun.Entry.Addr}
	start := time.Now()
	l.run(t, baseConns)
	base := make([]tunnel.Stats, len(agents))
	for i, a := range agents {
		base[i] = a.settle(t)
		t.Logf("%s after %d connections: %s", a.Role, l.done.Load(), format(base[i]))
	}
	l.run(t, total)
	elapsed := time.Since(start)
	t.Logf("%d connections in %v (%.0f/s; %d abandoned with RST), agents race-built: %v",
		l.done.Load(), elapsed.Round(time.Second), float64(l.done.Load())/elapsed.Seconds(), l.abandoned.Load(), harness.RaceBuild())
	for _, e := range l.errorSamples() {
		t.Errorf("connection failed: %s", e)
	}
	if n := l.errs.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed", n, l.done.Load())
	}
	for i, a := range agents {
		s := a.settle(t)
		t.Logf("%s after %d connections: %s", a.Role, l.done.Load(), format(s))
		if grew := int64(s.HeapBytes) - int64(base[i].HeapBytes); grew > heapSlack {
			t.Errorf("%s: live heap grew by %d KiB between %d and %d connections, more than %d KiB: "+
				"some state outlives its connection", a.Role, grew>>10, baseConns, l.done.Load(), heapSlack>>10)
		}
		if s.StreamsTotal-base[i].StreamsTotal != l.done.Load()-baseConns {
			t.Errorf("%s counted %d streams after the first %d connections, want one per connection: %d",
				a.Role, s.StreamsTotal-base[i].StreamsTotal, baseConns, l.done.Load()-baseConns)
		}
	}
	if s := entry.settle(t); s.Sessions != 1 {
		t.Errorf("entry has %d sessions up after the load, want 1", s.Sessions)
	}
}

func format(s tunnel.Stats) string {
	return fmt.Sprintf("live heap %d KiB, sessions %d (recycled %d), streams %d (total %d), goroutines %d, open fds %d",
		s.HeapBytes>>10, s.Sessions, s.SessionsRecycled, s.Streams, s.StreamsTotal, s.Goroutines, s.OpenFDs)
}

// load runs connections through addr, workers at a time. Its counters
// carry over from one run to the next.
type load struct {
	addr      string
	started   atomic.Int64 // connections begun
	done      atomic.Int64 // connections finished, failed ones included
	abandoned atomic.Int64
	errs      atomic.Int64
	mu        sync.Mutex
	samples   []string // the first few errors
}

// run makes connections until upTo have been started, and returns when all
// of them have finished.
func (l *load) run(t *testing.T, upTo int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(upTo)))
			for ctx.Err() == nil && l.started.Add(1) <= upTo {
				l.one(rng)
				l.done.Add(1)
			}
		}()
	}
	wg.Wait()
	l.started.Store(l.done.Load())
	if ctx.Err() != nil {
		t.Fatalf("%d connections not done within 20 minutes: the agents are stuck", upTo)
	}
}

// one runs one connection of a kind picked at random.
func (l *load) one(rng *rand.Rand) {
	c, err := net.DialTimeout("tcp", l.addr, 10*time.Second)
	if err != nil {
		l.fail("dial", err)
		return
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	size := 1 + rng.IntN(maxPayload)
	switch pick := rng.IntN(100); {
	case pick < abandonPercent:
		tc.Write(make([]byte, rng.IntN(size+1)))
		if rng.IntN(2) == 0 {
			tc.SetReadDeadline(time.Now().Add(time.Duration(rng.IntN(3)) * time.Millisecond))
			io.ReadFull(tc, make([]byte, 1+rng.IntN(size)))
		}
		tc.SetLinger(0)
		l.abandoned.Add(1)
	case pick < abandonPercent+fullClosePercent:
		// Write, read the echo, close both ways: the backend's digest is
		// never read.
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if err := harness.EchoBack(tc, p); err != nil {
			l.fail("full-close exchange", err)
		}
	default:
		if err := harness.HashEchoExchange(tc, int64(size), rng.Uint64()); err != nil {
			l.fail("half-close exchange", err)
		}
	}
}

func (l *load) fail(kind string, err error) {
	l.errs.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.samples) < 10 {
		l.samples = append(l.samples, kind+": "+err.Error())
	}
}

func (l *load) errorSamples() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.samples...)
}

// agent is a running entry or exit with its status endpoint.
type agent struct{ *harness.Agent }

// settle waits until the agent has no stream open, then returns its stats
// read after three forced collections (sync.Pool keeps its buffers over
// one), the last of them.
func (a *agent) settle(t *testing.T) tunnel.Stats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := a.stats(t)
		if s.Streams == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d streams still open 30s after the load stopped", a.Role, s.Streams)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var s tunnel.Stats
	for range 3 {
		s = a.stats(t)
	}
	return s
}

// stats reads the agent's /status?gc=1.
func (a *agent) stats(t *testing.T) tunnel.Stats {
	t.Helper()
	body, err := a.Get("/status?gc=1")
	if err != nil {
		t.Fatal(err)
	}
	var s tunnel.Stats
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("%s: GET /status: decoding: %v", a.Role, err)
	}
	return s
}
