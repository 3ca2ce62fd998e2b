package pressure

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// Flood settings: 200 concurrent clients for 10 s, each connection an
// authorized-looking HELLO_I that is never followed by KEY_I.
const (
	floodClients  = 200
	floodDuration = 10 * time.Second
	// floodHold bounds how long a "holding" client keeps a connection open
	// in silence after the exit's reply before it vanishes.
	floodHold = time.Second
	// baseline is how long the established session's throughput is
	// measured before the flood.
	baseline = 3 * time.Second
	// exchangeSize is one unit of the established session's traffic.
	exchangeSize = 2 * mib
)

// floodCounts are what the flood clients saw.
type floodCounts struct {
	conns      atomic.Int64 // connections made
	dialErrs   atomic.Int64
	helloR     atomic.Int64 // HELLO_R received: the exit signed (private-key work)
	busy       atomic.Int64 // ALERT 8 busy received
	otherAlert atomic.Int64 // any other ALERT
	noReply    atomic.Int64 // closed or reset before any reply
	garbage    atomic.Int64 // a reply that is neither HELLO_R nor ALERT

	// holding counts connections that got HELLO_R and are not closed yet:
	// each holds one of the exit's handshake slots, so it never exceeds
	// --max-handshakes.
	holding, maxHolding atomic.Int64
}

// perSourceCap is the exit's bound on handshakes in progress from one
// source (tunnel.maxHandshakesPerSource, documented in README).
const perSourceCap = 8

// floodSources is how many loopback addresses the "cap" flood comes from:
// two clients each, within the per-source cap.
const floodSources = floodClients / 2

// TestHandshakeFlood floods the exit with authorized-looking handshakes
// that vanish after the exit's reply, first from many sources with a
// per-source rate that lets the flood through (so that --max-handshakes is
// what holds), then from one source with the default rate of 10/s per
// source (so that the per-source guards hold). Meanwhile an established
// entry session keeps moving data.
func TestHandshakeFlood(t *testing.T) {
	t.Run("cap", func(t *testing.T) {
		// The rate is far above what 200 clients on loopback reach, and each
		// source has two clients, so every connection reaches the handshake
		// and the cap of 64 is what holds.
		c := runFlood(t, 100000, floodSources)
		if c.busy.Load() == 0 {
			t.Errorf("no ALERT busy in %d connections from %d concurrent clients: --max-handshakes 64 never held", c.conns.Load(), floodClients)
		}
		if c.helloR.Load() == 0 {
			t.Errorf("no HELLO_R at all: the exit did no handshakes")
		}
	})
	t.Run("rate", func(t *testing.T) {
		c := runFlood(t, 0, 1) // the default --handshake-rate, 10/s per source, burst 20
		if m := c.maxHolding.Load(); m > perSourceCap {
			t.Errorf("%d connections from one source held HELLO_R at once, more than the per-source cap of %d", m, perSourceCap)
		}
		// runFlood checks the token bucket's bound on HELLO_R; here the
		// limiter must have refused the bulk of the flood.
		if c.busy.Load() < c.conns.Load()/2 {
			t.Errorf("only %d of %d connections answered busy under the default rate limit", c.busy.Load(), c.conns.Load())
		}
	})
}

// runFlood starts an exit with the default --max-handshakes and the given
// --handshake-rate (0: the default, 10), and a real entry; measures the
// entry session's throughput alone, then during the flood from sources
// loopback addresses (1: 127.0.0.1 alone); and checks the exit's guards and
// memory.
func runFlood(t *testing.T, rate float64, sources int) *floodCounts {
	// A short handshake timeout keeps slots churning, so both the cap and
	// fresh private-key work show within the flood.
	args := []string{"--handshake-timeout", "3s"}
	label := fmt.Sprintf("%d sources, --handshake-rate default (10)", sources)
	if rate > 0 {
		args = append(args, "--handshake-rate", strconv.FormatFloat(rate, 'f', -1, 64))
		label = fmt.Sprintf("%d sources, --handshake-rate %s", sources, args[len(args)-1])
	} else {
		rate = 10
	}
	r := startRig(t, harness.HashEcho, args...)
	_, entryAddr := r.startEntry(t)
	hello := helloPool(t, r.entryPriv.keyID, 32)

	smp := r.startSampler(100 * time.Millisecond)
	defer smp.finish()

	// The established session's traffic: back-to-back verified exchanges.
	type xfer struct {
		start, end time.Time
		err        error
	}
	var (
		xmu   sync.Mutex
		xfers []xfer
	)
	trafficStop := make(chan struct{})
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for seed := uint64(1); ; seed++ {
			select {
			case <-trafficStop:
				return
			default:
			}
			s := time.Now()
			err := harness.Exchange(entryAddr, exchangeSize, seed, 2*time.Minute)
			xmu.Lock()
			xfers = append(xfers, xfer{s, time.Now(), err})
			xmu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-trafficStop:
		default:
			close(trafficStop)
		}
		<-trafficDone
	}()

	time.Sleep(baseline)
	before := r.mustStatus(t)
	floodStart := time.Now()
	c := flood(r.exit.Addr, sources, hello, floodStart.Add(floodDuration))
	floodEnd := time.Now()
	after := r.mustStatus(t)
	close(trafficStop)
	<-trafficDone
	samples := smp.finish()

	// The established session: every exchange intact, throughput figures.
	xmu.Lock()
	defer xmu.Unlock()
	var baseBytes, floodBytes int64
	var baseTime, floodTime time.Duration
	for i, x := range xfers {
		if x.err != nil {
			t.Errorf("exchange %d (%v after the flood began) through the established session: %v", i, x.start.Sub(floodStart).Round(time.Millisecond), x.err)
			continue
		}
		switch {
		case x.end.Before(floodStart):
			baseBytes += exchangeSize
			baseTime += x.end.Sub(x.start)
		case !x.start.Before(floodStart) && !x.end.After(floodEnd):
			floodBytes += exchangeSize
			floodTime += x.end.Sub(x.start)
		}
	}
	if floodBytes == 0 {
		t.Errorf("no exchange completed through the established session during the %v flood", floodDuration)
	}
	mibps := func(b int64, d time.Duration) float64 {
		if d == 0 {
			return 0
		}
		return float64(b) / mib / d.Seconds()
	}
	t.Logf("flood [%s]: established session throughput (%d MiB exchanges, both ways, verified): before the flood %.1f MiB/s (%d MiB), during the flood %.1f MiB/s (%d MiB)",
		label, exchangeSize/mib, mibps(baseBytes, baseTime), baseBytes/mib, mibps(floodBytes, floodTime), floodBytes/mib)

	// What the flood clients saw, and what the exit counted.
	secs := floodEnd.Sub(floodStart).Seconds()
	refused := after.HandshakesRefused - before.HandshakesRefused
	failed := after.HandshakeFailures - before.HandshakeFailures
	t.Logf("flood [%s]: %d clients for %.1fs: %d connections (%.0f/s), %d dial errors", label, floodClients, secs,
		c.conns.Load(), float64(c.conns.Load())/secs, c.dialErrs.Load())
	t.Logf("flood [%s]: HELLO_R (exit signed, private-key work) %d = %.1f/s; ALERT busy %d = %.1f/s; other ALERT %d; no reply %d; peak HELLO_R connections held at once %d (cap 64)",
		label, c.helloR.Load(), float64(c.helloR.Load())/secs, c.busy.Load(), float64(c.busy.Load())/secs,
		c.otherAlert.Load(), c.noReply.Load(), c.maxHolding.Load())
	t.Logf("flood [%s]: exit /status: handshakes_refused +%d (%.1f/s), handshake_failures +%d (%.1f/s), sessions %d",
		label, refused, float64(refused)/secs, failed, float64(failed)/secs, after.Sessions)

	if c.garbage.Load() != 0 || c.otherAlert.Load() != 0 {
		t.Errorf("%d replies were neither HELLO_R nor ALERT, %d ALERTs were not busy", c.garbage.Load(), c.otherAlert.Load())
	}
	if m := c.maxHolding.Load(); m > 64 {
		t.Errorf("%d connections held HELLO_R at once: more handshakes in progress than --max-handshakes 64", m)
	}
	// Every busy the clients saw was counted by the exit (a reply lost to a
	// client's close can make the exit's count larger, never smaller).
	if refused < c.busy.Load() {
		t.Errorf("exit counted %d refused handshakes, clients saw %d ALERT busy", refused, c.busy.Load())
	}
	if failed < c.helloR.Load()*9/10 {
		t.Errorf("exit counted %d failed handshakes, but %d were abandoned after HELLO_R", failed, c.helloR.Load())
	}
	if after.Sessions != 1 {
		t.Errorf("exit has %d sessions after the flood, want the entry's 1", after.Sessions)
	}
	// Each connection takes a token of its source's bucket (burst 2*rate)
	// before its handshake: the exit cannot have signed more than that.
	if limit := int64(sources) * int64(2*rate+rate*secs+2); c.helloR.Load() > limit {
		t.Errorf("%d HELLO_R in %.1fs exceeds what --handshake-rate %v admits (%d)", c.helloR.Load(), secs, rate, limit)
	}

	// The exit's memory during the flood.
	p := summarize(samples, floodStart, floodEnd.Add(time.Second))
	t.Logf("flood [%s]: exit during the flood: %s", label, p)
	if p.n < 10 {
		t.Errorf("only %d /status samples during the flood (%d failed): the status endpoint did not answer", p.n, p.failed)
	}
	// Bounds: the flood's own connections (a few goroutines each) and the
	// 64 handshakes' state, with room; an exit that buffered or spawned per
	// connection without bound goes far past them.
	if p.heap > 64*mib {
		t.Errorf("exit heap reached %.1f MiB during the flood, want < 64 MiB", float64(p.heap)/mib)
	}
	if p.goroutines > 4*floodClients+200 {
		t.Errorf("exit reached %d goroutines with %d flood clients", p.goroutines, floodClients)
	}
	if lim := rssLimit(192 * mib); p.rss > lim {
		t.Errorf("exit VmRSS reached %.1f MiB during the flood, want < %d MiB", float64(p.rss)/mib, lim/mib)
	}
	// After the flood the exit returns to its resting state.
	rest := r.waitStatus(t, 15*time.Second, "goroutines back near rest", func(s stats) bool {
		return s.Goroutines < 50
	})
	t.Logf("flood [%s]: exit after the flood: goroutines %d, heap %.1f MiB, open fds %d", label, rest.Goroutines, float64(rest.HeapBytes)/mib, rest.OpenFDs)
	return c
}

// helloPool makes n distinct preface || HELLO_I messages with key id keyID;
// the flood reuses them, so that the clients' key generation does not eat
// the CPU the exit needs.
func helloPool(t testing.TB, keyID [32]byte, n int) [][]byte {
	pool := make([][]byte, n)
	for i := range pool {
		pool[i] = helloI(t, keyID)
	}
	return pool
}

// flood runs floodClients clients until end, spread over sources loopback
// addresses (1: 127.0.0.1 alone). Each connects, sends a HELLO_I, reads the
// exit's first reply, and vanishes: even clients close at once, odd ones
// hold the connection in silence (never sending KEY_I) for up to floodHold
// first.
func flood(addr string, sources int, hello [][]byte, end time.Time) *floodCounts {
	c := &floodCounts{}
	var wg sync.WaitGroup
	for i := range floodClients {
		from := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
		if sources > 1 {
			from.IP = net.IPv4(127, 0, 2, byte(1+i%sources))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for time.Now().Before(end) {
				floodOnce(addr, from, hello[rng.IntN(len(hello))], i%2 == 1, rng, c)
			}
		}()
	}
	wg.Wait()
	return c
}

func floodOnce(addr string, from *net.TCPAddr, hello []byte, hold bool, rng *rand.Rand, c *floodCounts) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: from}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		c.dialErrs.Add(1)
		time.Sleep(10 * time.Millisecond)
		return
	}
	defer conn.Close()
	c.conns.Add(1)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(hello); err != nil {
		c.noReply.Add(1)
		return
	}
	typ, body, err := readReply(conn)
	switch {
	case err != nil && typ == 0:
		c.noReply.Add(1)
		return
	case err != nil:
		c.garbage.Add(1)
		return
	case typ == msgAlert && len(body) >= 2 && body[0] == alertBusy:
		c.busy.Add(1)
		return
	case typ == msgAlert:
		c.otherAlert.Add(1)
		return
	case typ != msgHelloR:
		c.garbage.Add(1)
		return
	}
	c.helloR.Add(1)
	n := c.holding.Add(1)
	for m := c.maxHolding.Load(); n > m && !c.maxHolding.CompareAndSwap(m, n); m = c.maxHolding.Load() {
	}
	defer c.holding.Add(-1) // before the deferred Close: the slot is still held
	if hold {
		// Stay silent; the exit may cut us first at its handshake timeout.
		conn.SetReadDeadline(time.Now().Add(time.Duration(rng.Int64N(int64(floodHold)))))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return
		}
	}
}
