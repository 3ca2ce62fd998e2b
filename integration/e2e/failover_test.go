package e2e

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestFailover runs one entry with two exits, each with its own key (the
// first pinned by --peer-key, the second by --peer ADDR=KEY), under a
// steady load of checked exchanges. SIGKILL of the active exit resets the
// connections it carried (never a clean, truncated end), and new
// connections go to the other exit; every byte of every exchange that
// completes is checked. Then the killed exit comes back and the active one
// gets SIGTERM: its drain moves new connections over without a single
// failed one, and the connections it carries finish.
func TestFailover(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	r2 := *r
	r2.Exit = harness.NewIdentity(t, r.Bin, "exit2")
	backend := harness.StartHashEcho(t)
	exit1 := r.StartExit(t, backend.Addr(), harness.Options{})
	exit2 := r2.StartExit(t, backend.Addr(), harness.Options{Args: []string{"--drain-timeout", "60s"}})
	entry := r.StartEntry(t, exit1.Addr, harness.Options{Status: true,
		Args: []string{"--peer", exit2.Addr + "=" + r2.Exit.Pub}})
	if l := entry.WaitMessage(t, 1, 30*time.Second, "session established"); l.String("peer") != exit1.Addr {
		t.Fatalf("first session with %q, want the first exit %s", l.String("peer"), exit1.Addr)
	}

	// Connections held open on the first exit, in the middle of an exchange.
	var held []*net.TCPConn
	for range 3 {
		c := harness.Dial(t, entry.Addr, 60*time.Second)
		if err := harness.EchoBack(c, []byte("held across the failover")); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}

	ld := startLoad(t, entry.Addr, 4)
	ld.waitDone(t, 20) // the load runs

	killed := time.Now()
	ld.mark(phaseKilled)
	if err := exit1.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, c := range held {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("held connection %d after SIGKILL of its exit: read %d bytes, %v; want a reset", i, n, err)
		}
	}
	l := entry.WaitMessage(t, 1, 30*time.Second, "failed over to another exit")
	if l.String("peer") != exit2.Addr || l.String("previous_peer") != exit1.Addr {
		t.Errorf("failover line %s: want from %s to %s", l.Raw, exit1.Addr, exit2.Addr)
	}
	ld.mark(phaseMoved)
	ld.waitDone(t, 20)
	t.Logf("the first exchange begun after SIGKILL completed %v after it", ld.firstAfter(phaseKilled).Sub(killed).Round(time.Millisecond))

	// The first exit comes back at its address; the second drains.
	r.StartExit(t, backend.Addr(), harness.Options{Listen: exit1.Addr})
	ld.mark(phaseDraining)
	if err := exit2.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	l = entry.WaitMessage(t, 2, 30*time.Second, "failed over to another exit")
	if l.String("peer") != exit1.Addr || l.String("reason") != "the exit is going away (GoAway)" {
		t.Errorf("second failover line %s: want to %s because of GoAway", l.Raw, exit1.Addr)
	}
	ld.waitDone(t, 20)
	if code := exit2.Wait(90 * time.Second); code != 0 {
		t.Errorf("drained exit ended with %d, want 0", code)
	}
	ld.stop()
	if _, err := entry.Get("/readyz"); err != nil {
		t.Errorf("entry not ready with the first exit back: %v", err)
	}
	for p, s := range ld.stats {
		t.Logf("%s: %d exchanges completed, %d reset", phase(p), s.ok, s.reset)
	}
}

// Phases of TestFailover's load: an exchange is counted in the phase in
// which it started.
type phase int

const (
	phaseSteady   phase = iota // both exits up
	phaseKilled                // from SIGKILL of the active exit until the entry has failed over
	phaseMoved                 // on the other exit
	phaseDraining              // from SIGTERM of that exit, the first one back
	phases
)

func (p phase) String() string {
	return [...]string{"steady", "killed", "moved", "draining"}[p]
}

// load runs exchanges of checked bytes through the entry until stop.
type load struct {
	t     *testing.T
	phase atomic.Int32
	quit  chan struct{}
	wg    sync.WaitGroup

	mu    sync.Mutex
	cond  *sync.Cond
	done  int               // exchanges begun in the current phase and completed
	first [phases]time.Time // when the first exchange begun in a phase completed
	stats [phases]struct{ ok, reset int }
}

func startLoad(t *testing.T, addr string, workers int) *load {
	ld := &load{t: t, quit: make(chan struct{})}
	ld.cond = sync.NewCond(&ld.mu)
	for w := range workers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for i := uint64(0); ; i++ {
				select {
				case <-ld.quit:
					return
				default:
				}
				p := phase(ld.phase.Load())
				size := int64(16<<10 + (i*7919+uint64(w)*104729)%(240<<10))
				err := harness.Exchange(addr, size, uint64(w)<<32|i, 60*time.Second)
				ld.record(p, err)
			}
		}()
	}
	t.Cleanup(ld.stop)
	return ld
}

// record counts one exchange that started in p. A reset is allowed only
// for connections opened before the entry failed over from the killed
// exit; any other failure, and above all a truncation or a wrong byte, is
// an error.
func (ld *load) record(p phase, err error) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	switch {
	case err == nil:
		ld.stats[p].ok++
		if ld.first[p].IsZero() {
			ld.first[p] = time.Now()
		}
		if int32(p) == ld.phase.Load() {
			ld.done++
			ld.cond.Broadcast()
		}
	case isReset(err) && p <= phaseKilled && ld.phase.Load() >= int32(phaseKilled):
		ld.stats[p].reset++
	default:
		ld.t.Errorf("exchange started in phase %s: %v", p, err)
	}
}

// isReset reports a connection the entry reset (a write may see the reset
// as a broken pipe).
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) && !errors.Is(err, io.EOF)
}

// mark starts phase p: exchanges are counted again from here.
func (ld *load) mark(p phase) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	ld.phase.Store(int32(p))
	ld.done = 0
}

// firstAfter returns when the first exchange begun in phase p or later
// completed.
func (ld *load) firstAfter(p phase) time.Time {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	var first time.Time
	for _, f := range ld.first[p:] {
		if !f.IsZero() && (first.IsZero() || f.Before(first)) {
			first = f
		}
	}
	return first
}

// waitDone waits until n exchanges begun since the last mark have
// completed.
func (ld *load) waitDone(t *testing.T, n int) {
	t.Helper()
	stop := time.AfterFunc(2*time.Minute, func() {
		ld.mu.Lock()
		defer ld.mu.Unlock()
		ld.cond.Broadcast()
	})
	defer stop.Stop()
	deadline := time.Now().Add(2 * time.Minute)
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for ld.done < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d exchanges completed in phase %s within 2 minutes, want %d", ld.done, phase(ld.phase.Load()), n)
		}
		ld.cond.Wait()
	}
}

func (ld *load) stop() {
	select {
	case <-ld.quit:
	default:
		close(ld.quit)
	}
	ld.wg.Wait()
}
