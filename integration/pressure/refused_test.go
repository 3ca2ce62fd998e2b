package pressure

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestStuffedBadServiceStreams acts as an authorized entry against an exit
// with --max-streams 4: it opens 2,000 streams for a service the exit does
// not have, sends 256 KiB (yamux's initial window, which a sender may send
// unasked) into each, and leaves them all open. The exit answers each with
// status 1, must keep nothing of what is sent into them, and must close the
// session once the peer keeps too many refused streams open (256).
func TestStuffedBadServiceStreams(t *testing.T) {
	const (
		streams = 2000
		stuff   = 256 << 10
	)
	r := startRig(t, harness.HashEcho, "--max-streams", "4")
	_, entryAddr := r.startEntry(t)
	s := r.dialSession(t)
	base := r.liveStatus(t)
	smp := r.startSampler(100 * time.Millisecond)
	defer smp.finish()

	start := time.Now()
	payload := make([]byte, stuff)
	var (
		wg                    sync.WaitGroup
		sent, refused, others atomic.Int64
		opened                int
	)
	sem := make(chan struct{}, 32)
	for ; opened < streams; opened++ {
		st, err := s.openService("x", fmt.Sprintf("10.0.2.1:%d", 1000+opened))
		if err != nil {
			break // the exit closed the session
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(st *yamux.Stream) {
			defer wg.Done()
			defer func() { <-sem }()
			st.SetWriteDeadline(time.Now().Add(30 * time.Second))
			n, _ := st.Write(payload)
			sent.Add(int64(n))
			// Status 1 (unknown service), or 4 when more than
			// --max-streams wait for their header to be read: both are
			// refusals that take the same drain-and-count path.
			switch code, _, err := readStatus(st, 30*time.Second); {
			case err != nil:
			case code == 1 || code == 4:
				refused.Add(1)
			default:
				others.Add(1)
			}
			// Neither read further nor close: the stream stays half-open.
		}(st)
	}
	wg.Wait()
	select {
	case <-s.CloseChan():
	case <-time.After(time.Minute):
		t.Fatalf("the session is still open after %d refused streams were left open (%.1f MiB sent into them)", opened, float64(sent.Load())/mib)
	}
	closedAfter := time.Since(start)
	time.Sleep(time.Second) // a last sample or ten after the close
	p := summarize(smp.finish(), start, time.Now())
	t.Logf("bad-service streams: %d opened before the exit closed the session after %v; %d refused (status 1 or 4), %d another status; %.1f MiB sent into them",
		opened, closedAfter.Round(time.Millisecond), refused.Load(), others.Load(), float64(sent.Load())/mib)
	t.Logf("bad-service streams: exit baseline heap %.1f MiB; during: %s", float64(base.HeapBytes)/mib, p)
	if others.Load() != 0 || refused.Load() < 256 {
		t.Errorf("%d streams refused (status 1 or 4) and %d answered another status; want a refusal for at least the 256 refused streams the exit keeps open", refused.Load(), others.Load())
	}
	r.exit.WaitLine(t, 1, 10*time.Second, "the reason the exit closed the session",
		harness.Contains("the peer keeps too many refused streams open"))
	// What the exit may hold at its peak: up to 256 refused streams with a
	// window each not yet drained (64 MiB), and garbage awaiting collection.
	if limit := base.HeapBytes + 96*mib; p.heap > limit {
		t.Errorf("exit heap peaked at %.1f MiB (baseline %.1f MiB) while a peer stuffed streams it had refused: want < %.1f MiB",
			float64(p.heap)/mib, float64(base.HeapBytes)/mib, float64(limit)/mib)
	}
	live := r.waitStatus(t, 30*time.Second, "the stuffing session gone", func(s stats) bool { return s.Sessions == 1 && s.Streams == 0 })
	after := r.liveStatus(t)
	t.Logf("bad-service streams: exit after: sessions %d, goroutines %d, live heap %.1f MiB", live.Sessions, after.Goroutines, float64(after.HeapBytes)/mib)
	if limit := base.HeapBytes + 16*mib; after.HeapBytes > limit {
		t.Errorf("exit live heap %.1f MiB after the session closed, baseline %.1f MiB", float64(after.HeapBytes)/mib, float64(base.HeapBytes)/mib)
	}
	if err := harness.Exchange(entryAddr, 1*mib, 3, 30*time.Second); err != nil {
		t.Errorf("real entry's exchange after the stuffing: %v", err)
	}
}
