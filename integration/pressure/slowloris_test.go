package pressure

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestSlowloris keeps 100 connections dripping one byte a second into the
// handshake, each from its own loopback address, so that the per-source
// guards stay out of the way: half drip the preface and HELLO_I, which the
// exit must cut at handshake.HelloTimeout; half send a version 1 HELLO_I
// at once, get HELLO_R and drip KEY_I, which the exit must cut at its
// KEY_I deadline (handshake.DefaultKeyIDeadline) or its handshake timeout,
// whichever comes first.
// However alive a connection looks, it is cut at its deadline, while a real
// entry connects and moves data during the drip.
func TestSlowloris(t *testing.T) {
	const (
		drippers = 100
		timeout  = 3 * time.Second
		// margin allows for scheduling on a loaded 2-core machine and a
		// race-enabled binary; the deadline itself is the exit's.
		margin = 2 * time.Second
		// early allows for clock granularity only: a connection's life is
		// measured from before its dial, so before the exit armed its
		// deadline.
		early = 20 * time.Millisecond
	)
	// --max-handshakes 800 keeps the caps out of the way: the 50 KEY_I
	// drippers hold a slot each from HELLO_I on, all for one key id, and
	// version 1 hellos may hold an eighth of the slots per key id (100 of
	// 800), twice what they need, so that a dripper reconnecting before
	// the exit has given back its last slot is not refused busy; the caps
	// are not what is tested here.
	r := startRig(t, harness.HashEcho, "--handshake-timeout", timeout.String(), "--max-handshakes", "800")
	before := r.mustStatus(t)

	msg := helloI(t, r.entryPriv.keyID)    // preface || HELLO_I
	keyI := []byte{0x03, 0x00, 0x01, 0x00} // a KEY_I header announcing 256 bytes, which never come

	var (
		mu       sync.Mutex
		lives    [2][]time.Duration // dial to cut, of connections the exit cut: [0] hello, [1] KEY_I
		tooEarly []string           // cut before the deadline
		open     atomic.Int64       // drip connections open now
		dialErr  atomic.Int64
	)
	deadlines := [2]time.Duration{min(handshake.HelloTimeout, timeout), min(handshake.DefaultKeyIDeadline, timeout)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstRound sync.WaitGroup // every dripper connected once
	var cutOnce sync.WaitGroup    // every dripper was cut once
	firstRound.Add(drippers)
	cutOnce.Add(drippers)
	for i := range drippers {
		kind := i % 2 // 0: drip the hello; 1: drip KEY_I
		d := &dripper{
			from: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i))},
			drip: msg,
		}
		if kind == 1 {
			d.first, d.drip = msg, keyI
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			connected, cut := false, false
			defer func() {
				if !connected {
					firstRound.Done()
				}
				if !cut {
					cutOnce.Done()
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				life, byExit := d.run(r.exit.Addr, stop, &open, func() {
					if !connected {
						connected = true
						firstRound.Done()
					}
				})
				if life < 0 {
					dialErr.Add(1)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if !byExit {
					return // stopped by the test
				}
				mu.Lock()
				lives[kind] = append(lives[kind], life)
				if life < deadlines[kind]-early {
					tooEarly = append(tooEarly, fmt.Sprintf("%v (deadline %v)", life, deadlines[kind]))
				}
				mu.Unlock()
				if !cut {
					cut = true
					cutOnce.Done()
				}
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	connected := make(chan struct{})
	go func() { firstRound.Wait(); close(connected) }()
	select {
	case <-connected:
	case <-time.After(30 * time.Second):
		t.Fatalf("only %d of %d drip connections up after 30s (%d dial errors)", open.Load(), drippers, dialErr.Load())
	}
	dripStart := time.Now()
	t.Logf("slowloris: %d connections dripping 1 byte/s into the handshake (hello deadline %v, exit --handshake-timeout %v)", open.Load(), deadlines[0], timeout)

	// A real entry connects and moves data while the drip goes on.
	entry, entryAddr := r.startEntry(t)
	hsLine := entry.WaitLine(t, 1, time.Second, "session established", harness.MessageIs("session established"))
	const size = 4 * mib
	xStart := time.Now()
	if err := harness.Exchange(entryAddr, size, 1, time.Minute); err != nil {
		t.Fatalf("exchange through the entry during the drip: %v", err)
	}
	xDur := time.Since(xStart)
	openAtExchange := open.Load()
	t.Logf("slowloris: entry session up %v after the drip began (entry handshake %v); %d MiB exchanged in %v (%.1f MiB/s) with %d drip connections open",
		xStart.Sub(dripStart).Round(time.Millisecond), hsLine.Fields["handshake"], size/mib, xDur.Round(time.Millisecond),
		float64(size)/mib/xDur.Seconds(), openAtExchange)
	if openAtExchange < drippers*9/10 {
		t.Errorf("only %d of %d drip connections open when the exchange finished: the exchange did not run during the drip", openAtExchange, drippers)
	}

	// Every dripper must see its connection cut once; then stop.
	cutDone := make(chan struct{})
	go func() { cutOnce.Wait(); close(cutDone) }()
	select {
	case <-cutDone:
	case <-time.After(timeout + margin + 10*time.Second):
		t.Errorf("not every drip connection was cut within %v", timeout+margin+10*time.Second)
	}
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	var cuts int
	for kind, what := range []string{"the preface and HELLO_I", "KEY_I"} {
		got := slices.Clone(lives[kind])
		slices.Sort(got)
		cuts += len(got)
		if len(got) < drippers/2 {
			t.Errorf("the exit cut %d connections dripping %s, want at least %d", len(got), what, drippers/2)
			continue
		}
		t.Logf("slowloris: %d connections dripping %s cut by the exit; connect-to-cut min %v, median %v, p99 %v, max %v (deadline %v)",
			len(got), what, got[0].Round(time.Millisecond), got[len(got)/2].Round(time.Millisecond),
			got[len(got)*99/100].Round(time.Millisecond), got[len(got)-1].Round(time.Millisecond), deadlines[kind])
		if mx := got[len(got)-1]; mx > deadlines[kind]+margin {
			t.Errorf("a connection dripping %s lived %v, beyond its %v deadline + %v", what, mx, deadlines[kind], margin)
		}
	}
	t.Logf("slowloris: %d dial errors", dialErr.Load())
	if len(tooEarly) > 0 {
		t.Errorf("%d drip connections were cut before their deadline, e.g. after %s", len(tooEarly), tooEarly[0])
	}

	after := r.waitStatus(t, 10*time.Second, "the cut handshakes counted as failures", func(s stats) bool {
		return s.HandshakeFailures-before.HandshakeFailures >= int64(cuts)
	})
	t.Logf("slowloris: exit /status after: handshake_failures +%d, handshakes_refused +%d, sessions %d, goroutines %d, heap %.1f MiB",
		after.HandshakeFailures-before.HandshakeFailures, after.HandshakesRefused-before.HandshakesRefused,
		after.Sessions, after.Goroutines, float64(after.HeapBytes)/mib)
	if after.HandshakesRefused != before.HandshakesRefused {
		t.Errorf("exit refused %d handshakes: the busy/rate guards interfered with the timeout test", after.HandshakesRefused-before.HandshakesRefused)
	}
	if after.Sessions != 1 {
		t.Errorf("exit has %d sessions, want the entry's 1", after.Sessions)
	}
	if n := entry.Count(harness.Contains("session with the exit lost")); n != 0 {
		t.Errorf("the entry lost its session %d times during the drip", n)
	}
	// The session still carries data after the drip.
	if err := harness.Exchange(entryAddr, 256<<10, 2, 30*time.Second); err != nil {
		t.Errorf("exchange after the drip: %v", err)
	}
}

// dripper is one slowloris client: from a local address, it sends first at
// once and reads the exit's reply (if first is not empty), then writes drip
// one byte a second.
type dripper struct {
	from        *net.TCPAddr
	first, drip []byte
}

// run dials addr and drips until the exit ends the connection or stop is
// closed. connected runs once the connection is up. It returns how long the
// connection lived, from before the dial until the exit cut it (first EOF,
// reset or write failure), and whether the exit cut it; life is negative if
// the dial (or the exchange of first for a reply) failed.
func (d *dripper) run(addr string, stop <-chan struct{}, open *atomic.Int64, connected func()) (life time.Duration, byExit bool) {
	start := time.Now()
	dialer := net.Dialer{Timeout: 5 * time.Second, LocalAddr: d.from}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return -1, false
	}
	defer c.Close()
	open.Add(1)
	defer open.Add(-1)
	connected()
	if len(d.first) > 0 {
		c.Write(d.first)
		if typ, _, err := readReply(c); err != nil || typ != msgHelloR {
			return -1, false
		}
	}

	ended := make(chan time.Time, 1)
	go func() { // the exit sends nothing more before KEY_I: any return is the cut
		var b [1]byte
		c.Read(b[:])
		ended <- time.Now()
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		if i < len(d.drip) {
			if _, err := c.Write(d.drip[i : i+1]); err != nil {
				at := time.Now()
				select {
				case at = <-ended:
				case <-time.After(time.Second):
				}
				return at.Sub(start), true
			}
		}
		select {
		case at := <-ended:
			return at.Sub(start), true
		case <-stop:
			return 0, false
		case <-tick.C:
		}
	}
}
