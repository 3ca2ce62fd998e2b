package pressure

import (
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestSlowloris keeps 100 connections dripping one byte a second into the
// handshake (the preface, then HELLO_I). The exit must cut each at its
// handshake deadline, however alive the connection looks, while a real
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
	// --max-handshakes 200 and --handshake-rate 1000 keep the two other
	// guards out of the way: with the defaults the 100 drippers from
	// 127.0.0.1 would be answered ALERT busy by the cap (64) and by the
	// per-source rate (10/s, burst 20), and the test would measure those
	// guards instead of the handshake timeout.
	r := startRig(t, harness.HashEcho, "--handshake-timeout", timeout.String(),
		"--max-handshakes", "200", "--handshake-rate", "1000")
	before := r.mustStatus(t)

	msg := helloI(t, r.entryPriv.keyID) // preface || HELLO_I

	var (
		mu       sync.Mutex
		lives    []time.Duration // dial to cut, of connections the exit cut
		tooEarly []time.Duration // cut before the deadline
		open     atomic.Int64    // drip connections open now
		dialErr  atomic.Int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstRound sync.WaitGroup // every dripper connected once
	var cutOnce sync.WaitGroup    // every dripper was cut once
	firstRound.Add(drippers)
	cutOnce.Add(drippers)
	for range drippers {
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
				life, byExit := drip(r.exitAddr, msg, stop, &open, func() {
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
				lives = append(lives, life)
				if life < timeout-early {
					tooEarly = append(tooEarly, life)
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
	t.Logf("slowloris: %d connections dripping 1 byte/s into the handshake (exit --handshake-timeout %v)", open.Load(), timeout)

	// A real entry connects and moves data while the drip goes on.
	entry, entryAddr := r.startEntry(t)
	hsLine := entry.WaitLine(t, 1, time.Second, "session established", harness.MessageIs("session established"))
	const size = 4 * mib
	xStart := time.Now()
	if err := exchange(entryAddr, size, 1, time.Minute); err != nil {
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
	got := slices.Clone(lives)
	mu.Unlock()
	slices.Sort(got)
	if len(got) < drippers {
		t.Fatalf("the exit cut %d drip connections, want at least %d", len(got), drippers)
	}
	t.Logf("slowloris: %d drip connections cut by the exit; connect-to-cut min %v, median %v, p99 %v, max %v (deadline %v); %d dial errors",
		len(got), got[0].Round(time.Millisecond), got[len(got)/2].Round(time.Millisecond),
		got[len(got)*99/100].Round(time.Millisecond), got[len(got)-1].Round(time.Millisecond), timeout, dialErr.Load())
	if len(tooEarly) > 0 {
		t.Errorf("%d drip connections were cut before the %v deadline (e.g. after %v)", len(tooEarly), timeout, tooEarly[0])
	}
	if mx := got[len(got)-1]; mx > timeout+margin {
		t.Errorf("a drip connection lived %v, beyond the %v handshake deadline + %v", mx, timeout, margin)
	}

	after := r.waitStatus(t, 10*time.Second, "the cut handshakes counted as failures", func(s stats) bool {
		return s.HandshakeFailures-before.HandshakeFailures >= int64(len(got))
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
	if err := exchange(entryAddr, 256<<10, 2, 30*time.Second); err != nil {
		t.Errorf("exchange after the drip: %v", err)
	}
}

// drip dials addr and writes msg one byte a second until the exit ends the
// connection or stop is closed. connected runs once the connection is up.
// It returns how long the connection lived, from before the dial until the
// exit cut it (first EOF, reset or write failure), and whether the exit cut
// it; life is negative if the dial failed.
func drip(addr string, msg []byte, stop <-chan struct{}, open *atomic.Int64, connected func()) (life time.Duration, byExit bool) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return -1, false
	}
	defer c.Close()
	open.Add(1)
	defer open.Add(-1)
	connected()

	ended := make(chan time.Time, 1)
	go func() { // the exit sends nothing before HELLO_R: any return is the cut
		var b [1]byte
		c.Read(b[:])
		ended <- time.Now()
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		if i < len(msg) {
			if _, err := c.Write(msg[i : i+1]); err != nil {
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
