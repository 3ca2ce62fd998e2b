package pressure

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// maxStreams is the exit's --max-streams in TestMisbehavingPeer.
const maxStreams = 50

// Magic first bytes of a stream that make the peer test's backend write
// without end (firehoseMagic) or never read (blackholeMagic); anything else
// is echoed.
const (
	firehoseMagic  = "FIREHOSE"
	blackholeMagic = "BLACKHOL"
)

// peerBackend is the backend of TestMisbehavingPeer. Its methods are safe
// for concurrent use.
type peerBackend struct {
	hoses   atomic.Int64 // firehose connections accepted
	written atomic.Int64 // bytes the firehoses got into the kernel

	mu    sync.Mutex
	holes []hole // blackhole connections, until closeHoles
}

// hole is a blackhole connection; its handler returns when done closes.
type hole struct {
	c    net.Conn
	done chan struct{}
}

// handle dispatches on the first bytes: firehoseMagic writes as fast as the
// peer takes, blackholeMagic reads nothing more, anything else is served
// by harness.HashEcho, the bytes read included.
func (b *peerBackend) handle(c net.Conn) {
	var magic [len(firehoseMagic)]byte
	c.SetReadDeadline(time.Now().Add(time.Minute))
	n, err := io.ReadFull(c, magic[:])
	if err != nil && n == 0 {
		return
	}
	switch string(magic[:n]) {
	case firehoseMagic:
		b.hoses.Add(1)
		buf := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
		for {
			c.SetWriteDeadline(time.Now().Add(5 * time.Minute))
			n, err := c.Write(buf)
			b.written.Add(int64(n))
			if err != nil {
				return
			}
		}
	case blackholeMagic:
		done := make(chan struct{})
		b.mu.Lock()
		b.holes = append(b.holes, hole{c, done})
		b.mu.Unlock()
		<-done
	default:
		harness.HashEcho(&prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(magic[:n]), c)})
	}
}

// closeHoles closes the blackhole connections accepted so far. It must run
// before the backend is closed, which waits for the handlers.
func (b *peerBackend) closeHoles() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.holes {
		h.c.Close()
		close(h.done)
	}
	b.holes = nil
}

func (b *peerBackend) holeCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.holes)
}

// prefixConn is a net.Conn whose reads come from r.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// TestMisbehavingPeer acts as an authorized entry (its key, the real
// handshake, yamux over the record layer) that abuses its session, against
// an exit with --max-streams 50; a real entry, with its own session, keeps
// working through all of it.
func TestMisbehavingPeer(t *testing.T) {
	be := &peerBackend{}
	r := startRig(t, be.handle, "--max-streams", fmt.Sprint(maxStreams))
	t.Cleanup(be.closeHoles) // runs before the backend's cleanup
	entry, entryAddr := r.startEntry(t)
	seed := uint64(100)
	healthy := func(t *testing.T, when string) {
		t.Helper()
		seed++
		start := time.Now()
		if err := harness.Exchange(entryAddr, 1*mib, seed, 30*time.Second); err != nil {
			t.Fatalf("real entry's exchange %s: %v", when, err)
		}
		t.Logf("real entry: 1 MiB exchanged %s in %v", when, time.Since(start).Round(time.Millisecond))
	}
	healthy(t, "before the abuse")

	t.Run("stream flood", func(t *testing.T) { streamFlood(t, r, healthy) })
	t.Run("never reading", func(t *testing.T) { neverReading(t, r, be, healthy) })
	t.Run("backend never reads", func(t *testing.T) { backendNeverReads(t, r, be, healthy) })
	t.Run("ping flood", func(t *testing.T) { pingFlood(t, r, healthy) })
	// Last: the garbage it leaves inflates heap_bytes until the next GC.
	t.Run("stuffed refused streams", func(t *testing.T) { stuffedRefusedStreams(t, r, healthy) })

	if n := entry.Count(harness.Contains("session with the exit lost")); n != 0 {
		t.Errorf("the real entry lost its session %d times while another session was abused", n)
	}
}

// streamFlood opens far more streams than --max-streams on one session:
// those past the cap must get status 4 busy with a message, the exit must
// log each refusal, and streams must be served again once some close.
func streamFlood(t *testing.T, r *rig, healthy func(*testing.T, string)) {
	const extra = 200 // streams opened past the cap
	s := r.dialSession(t)
	refusedBefore := r.exit.Count(harness.Contains("stream refused"))

	held := make([]*yamux.Stream, 0, maxStreams)
	for i := range maxStreams {
		st, err := s.open(fmt.Sprintf("10.0.0.1:%d", 1000+i))
		if err != nil {
			t.Fatalf("opening stream %d: %v", i, err)
		}
		code, msg, err := readStatus(st, 10*time.Second)
		if err != nil || code != 0 {
			t.Fatalf("stream %d within the cap: status %d %q, err %v; want 0", i, code, msg, err)
		}
		held = append(held, st)
	}
	r.waitStatus(t, 10*time.Second, fmt.Sprintf("%d streams open", maxStreams), func(s stats) bool { return s.Streams == maxStreams })

	// Open the flood all at once, then read every answer.
	start := time.Now()
	flood := make([]*yamux.Stream, 0, extra)
	for i := range extra {
		st, err := s.open(fmt.Sprintf("10.0.0.2:%d", 1000+i))
		if err != nil {
			t.Fatalf("opening stream %d past the cap: %v (the exit should answer busy, not break the session)", maxStreams+i, err)
		}
		flood = append(flood, st)
	}
	var busy int
	for i, st := range flood {
		code, msg, err := readStatus(st, 10*time.Second)
		switch {
		case err != nil:
			t.Errorf("stream %d past the cap: %v", maxStreams+i, err)
		case code != 4:
			t.Errorf("stream %d past the cap: status %d %q, want 4 busy", maxStreams+i, code, msg)
		case !strings.Contains(msg, fmt.Sprint(maxStreams)) || !strings.Contains(msg, "stream"):
			t.Errorf("stream %d past the cap: busy message %q does not name the limit of %d streams", maxStreams+i, msg, maxStreams)
		default:
			busy++
			if i == 0 {
				t.Logf("stream flood: status 4 message: %q", msg)
			}
		}
		// After a refusal the exit closes the stream: EOF, no bytes.
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := st.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("stream %d past the cap: after the status read %d bytes, err %v; want EOF", maxStreams+i, n, err)
		}
		st.Close()
	}
	t.Logf("stream flood: %d streams opened past --max-streams %d, %d answered status 4 busy in %v",
		extra, maxStreams, busy, time.Since(start).Round(time.Millisecond))
	// The first refusal of a session is logged at warn; the others are
	// counted in the session's closing line (checked below), so that a flood
	// does not flood the log.
	r.exit.WaitLine(t, refusedBefore+1, 10*time.Second, "a line for the first refusal",
		harness.All(harness.Contains("stream refused"), harness.Level("warn")))
	if st := r.mustStatus(t); st.Streams != maxStreams {
		t.Errorf("exit reports %d streams open during the flood, want %d", st.Streams, maxStreams)
	}
	healthy(t, "after the stream flood")

	// Free ten slots: the session gets streams again, and they carry data.
	for _, st := range held[:10] {
		st.Close() // FIN: the backend answers with its digest and closes
	}
	r.waitStatus(t, 10*time.Second, fmt.Sprintf("%d streams open", maxStreams-10), func(s stats) bool { return s.Streams == maxStreams-10 })
	st, err := s.open("10.0.0.3:1")
	if err != nil {
		t.Fatal(err)
	}
	if code, msg, err := readStatus(st, 10*time.Second); err != nil || code != 0 {
		t.Fatalf("stream after slots were freed: status %d %q, err %v; want 0", code, msg, err)
	}
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := harness.HashEchoExchange(halfStream{st}, 512<<10, 7); err != nil {
		t.Errorf("exchange on a stream of the flooding session after slots were freed: %v", err)
	}
	for _, st := range held[10:] {
		st.Close()
	}
	s.Close()
	after := r.waitStatus(t, 10*time.Second, "the flooding session gone", func(s stats) bool { return s.Sessions == 1 && s.Streams == 0 })
	t.Logf("stream flood: exit after: sessions %d, streams %d, streams_total %d, goroutines %d, heap %.1f MiB",
		after.Sessions, after.Streams, after.StreamsTotal, after.Goroutines, float64(after.HeapBytes)/mib)
	closing := r.exit.WaitLine(t, 1, 10*time.Second, "the flooding session's closing line with its refusals",
		func(l harness.Line) bool {
			n, ok := l.Fields["streams_refused"].(float64)
			return l.Message() == "session closed" && ok && n >= extra
		})
	t.Logf("stream flood: exit logged: %s", closing.Raw)
	if n := r.exit.Count(harness.Contains("stream refused")) - refusedBefore; n != 1 {
		t.Errorf("exit logged %d refusal lines for one session, want 1 (the rest counted)", n)
	}
}

// stuffedRefusedStreams opens streams past the cap and, on each, sends as
// much data as yamux's initial window lets a sender send unasked (256 KiB),
// never closing them. The exit refuses them, but must not keep what is sent
// into them: it reads and discards it. (yamux takes each window into memory
// before anyone reads it, so the transient peak is bounded by the exit's
// cap on refused streams per session, 256, times 256 KiB; the live heap
// afterwards must be back near the baseline.)
func stuffedRefusedStreams(t *testing.T, r *rig, healthy func(*testing.T, string)) {
	const (
		extra = 200       // within the exit's cap of refused streams still open
		stuff = 256 << 10 // yamux's initial stream window
	)
	s := r.dialSession(t)
	base := r.liveStatus(t)
	smp := r.startSampler(100 * time.Millisecond)
	defer smp.finish()

	var held []*yamux.Stream
	for i := range maxStreams {
		st, err := s.open(fmt.Sprintf("10.0.1.1:%d", 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		if code, msg, err := readStatus(st, 10*time.Second); err != nil || code != 0 {
			t.Fatalf("stream %d within the cap: status %d %q, err %v", i, code, msg, err)
		}
		held = append(held, st)
	}
	start := time.Now()
	payload := make([]byte, stuff)
	var wg sync.WaitGroup
	var sent atomic.Int64
	var refused atomic.Int64
	sem := make(chan struct{}, 32)
	for i := range extra {
		st, err := s.open(fmt.Sprintf("10.0.1.2:%d", 1000+i))
		if err != nil {
			t.Fatalf("opening stream %d past the cap: %v", maxStreams+i, err)
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// Within the initial window the write does not wait for the exit.
			st.SetWriteDeadline(time.Now().Add(10 * time.Second))
			n, _ := st.Write(payload)
			sent.Add(int64(n))
			if code, _, err := readStatus(st, 10*time.Second); err == nil && code == 4 {
				refused.Add(1)
			}
			// Neither read further nor close: the stream stays half-open.
		}()
	}
	wg.Wait()
	time.Sleep(2 * time.Second) // let the exit take in what was sent
	samples := smp.finish()
	p := summarize(samples, start, time.Now())
	t.Logf("stuffed refused streams: %d streams past the cap, %d answered busy, %.1f MiB sent into them unasked; exit baseline heap %.1f MiB; %s",
		extra, refused.Load(), float64(sent.Load())/mib, float64(base.HeapBytes)/mib, p)
	if refused.Load() != extra {
		t.Errorf("%d of %d streams past the cap answered busy", refused.Load(), extra)
	}
	// What the exit may keep: its own working set; nothing of what a peer
	// sent into streams it had refused.
	live := r.liveStatus(t)
	t.Logf("stuffed refused streams: live heap %.1f MiB before, %.1f MiB after (peak with garbage %.1f MiB)",
		float64(base.HeapBytes)/mib, float64(live.HeapBytes)/mib, float64(p.heap)/mib)
	if limit := base.HeapBytes + 32*mib; live.HeapBytes > limit {
		t.Errorf("exit live heap grew from %.1f MiB to %.1f MiB while a peer sent %.1f MiB into %d streams the exit had refused: "+
			"refused streams keep what the peer sends (bound: %.1f MiB)",
			float64(base.HeapBytes)/mib, float64(live.HeapBytes)/mib, float64(sent.Load())/mib, extra, float64(limit)/mib)
	}
	healthy(t, "after the stuffed refused streams")
	for _, st := range held {
		st.Close()
	}
	s.Close()
	// 30 s: with -race and other packages running, the exit takes seconds
	// to wind down a session of 250 streams.
	r.waitStatus(t, 30*time.Second, "the stuffing session gone", func(s stats) bool { return s.Sessions == 1 && s.Streams == 0 })
}

// neverReading opens streams to the firehose backend and never reads them:
// yamux flow control must stop the exit from reading the backend, so the
// exit's memory stays flat, and other sessions keep working.
func neverReading(t *testing.T, r *rig, be *peerBackend, healthy func(*testing.T, string)) {
	const (
		streams = 20
		watch   = 10 * time.Second
	)
	s := r.dialSession(t)
	base := r.mustStatus(t)
	connsBefore := be.hoses.Load()
	for i := range streams {
		st, err := s.open(fmt.Sprintf("10.0.2.1:%d", 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		if code, msg, err := readStatus(st, 10*time.Second); err != nil || code != 0 {
			t.Fatalf("stream %d: status %d %q, err %v", i, code, msg, err)
		}
		if _, err := st.Write([]byte(firehoseMagic)); err != nil {
			t.Fatal(err)
		}
		// Never read st again.
	}
	deadline := time.Now().Add(10 * time.Second)
	for be.hoses.Load()-connsBefore < streams {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d firehose streams reached the backend", be.hoses.Load()-connsBefore, streams)
		}
		time.Sleep(20 * time.Millisecond)
	}
	writtenStart := be.written.Load()
	start := time.Now()
	smp := r.startSampler(200 * time.Millisecond)
	defer smp.finish()

	// Meanwhile another session (the real entry) keeps working.
	healthy(t, "while streams of another session are not read")
	time.Sleep(time.Until(start.Add(watch / 2)))
	writtenMid := be.written.Load()
	time.Sleep(time.Until(start.Add(watch)))
	writtenEnd := be.written.Load()
	samples := smp.finish()

	first := summarize(samples, start, start.Add(watch/2))
	second := summarize(samples, start.Add(watch/2), start.Add(watch+time.Second))
	perStream := float64(writtenEnd-writtenStart) / streams / mib
	t.Logf("never reading: %d unread streams from a backend writing without end: backend wrote %.1f MiB before the watch, %.2f MiB in its first %v and %.2f MiB in its second %v (%.2f MiB per stream over the watch)",
		streams, float64(writtenStart)/mib, float64(writtenMid-writtenStart)/mib, watch/2, float64(writtenEnd-writtenMid)/mib, watch/2, perStream)
	t.Logf("never reading: exit baseline heap %.1f MiB; first half %s; second half %s", float64(base.HeapBytes)/mib, first, second)
	// The backend is held back by flow control: over the last half of the
	// watch it may only fill what kernel buffers grow by, not megabytes per
	// stream per second as an unbounded buffer would take.
	if grew := writtenEnd - writtenMid; grew > streams*mib {
		t.Errorf("backend wrote %.1f MiB more into %d unread streams in %v: the exit keeps reading a backend whose stream is not read",
			float64(grew)/mib, streams, watch/2)
	}
	if limit := base.HeapBytes + 48*mib; second.heap > limit {
		t.Errorf("exit heap reached %.1f MiB with %d unread streams (baseline %.1f MiB)", float64(second.heap)/mib, streams, float64(base.HeapBytes)/mib)
	}
	if second.heap > first.heap+8*mib {
		t.Errorf("exit heap still growing with unread streams: %.1f MiB then %.1f MiB", float64(first.heap)/mib, float64(second.heap)/mib)
	}
	if st := r.mustStatus(t); st.Streams != streams {
		t.Errorf("exit reports %d streams open, want the %d unread ones", st.Streams, streams)
	}
	healthy(t, "after 10s of unread streams on another session")
	s.Close()
	r.waitStatus(t, 15*time.Second, "the unread streams closed with their session", func(s stats) bool { return s.Sessions == 1 && s.Streams == 0 })
}

// backendNeverReads fills every stream the session may have (the cap) with
// as much as the exit takes, towards a backend that never reads: what the
// exit buffers must stay within its flow-control window per stream.
func backendNeverReads(t *testing.T, r *rig, be *peerBackend, healthy func(*testing.T, string)) {
	const (
		window = 1 << 20 // the exit's --window default
		fill   = 5 * time.Second
	)
	s := r.dialSession(t)
	base := r.mustStatus(t)
	defer be.closeHoles()
	holesBefore := be.holeCount()
	var streams []*yamux.Stream
	for i := range maxStreams {
		st, err := s.open(fmt.Sprintf("10.0.3.1:%d", 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		if code, msg, err := readStatus(st, 10*time.Second); err != nil || code != 0 {
			t.Fatalf("stream %d: status %d %q, err %v", i, code, msg, err)
		}
		if _, err := st.Write([]byte(blackholeMagic)); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	smp := r.startSampler(200 * time.Millisecond)
	defer smp.finish()
	start := time.Now()
	var accepted atomic.Int64
	var wg sync.WaitGroup
	chunk := bytes.Repeat([]byte{0x5a}, 64<<10)
	for _, st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.SetWriteDeadline(start.Add(fill)) // a write blocked on the window ends here
			for {
				n, err := st.Write(chunk)
				accepted.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	healthy(t, "while another session fills streams towards a backend that does not read")
	wg.Wait()
	time.Sleep(time.Second) // the exit takes in what is in flight
	samples := smp.finish()
	p := summarize(samples, start, time.Now())
	t.Logf("backend never reads: %d streams (the cap) took %.1f MiB in %v (%.2f MiB per stream: kernel buffers plus the exit's window); exit baseline heap %.1f MiB; %s",
		maxStreams, float64(accepted.Load())/mib, fill, float64(accepted.Load())/maxStreams/mib, float64(base.HeapBytes)/mib, p)
	if got := be.holeCount() - holesBefore; got != maxStreams {
		t.Errorf("%d of %d streams reached the blackhole backend", got, maxStreams)
	}
	// The exit holds at most one window per stream in yamux (in a buffer
	// that may have twice the capacity) and a copy buffer, besides its
	// working set; far less than what the peer pushed.
	if limit := base.HeapBytes + maxStreams*(2*window+copyBuf) + 32*mib; p.heap > limit {
		t.Errorf("exit heap reached %.1f MiB with %d streams towards a backend that does not read; bound %d streams x (2 windows + copy buffer) + 32 MiB = %.1f MiB",
			float64(p.heap)/mib, maxStreams, maxStreams, float64(limit)/mib)
	}
	// The session goes; its streams, whose backend still does not read,
	// must go with it (forward: a stream whose session died is aborted),
	// not linger until the write-stall timeout.
	s.Close()
	closed := time.Now()
	r.waitStatus(t, 10*time.Second, "the session gone", func(s stats) bool { return s.Sessions == 1 })
	var left stats
	for deadline := closed.Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left = r.mustStatus(t)
		if left.Streams == 0 || time.Now().After(deadline) {
			break
		}
	}
	if left.Streams != 0 {
		t.Errorf("%v after its session closed, the exit still has %d of its streams open (goroutines %d, heap %.1f MiB, fds %d): "+
			"a stream blocked writing to a backend that does not read ignores its session's end until the write-stall timeout",
			time.Since(closed).Round(time.Second), left.Streams, left.Goroutines, float64(left.HeapBytes)/mib, left.OpenFDs)
	}
	be.closeHoles() // unblocks the exit if it is stuck, for the next tests
	r.waitStatus(t, 10*time.Second, "the blackhole streams closed once the backend closed", func(s stats) bool { return s.Sessions == 1 && s.Streams == 0 })
}

// copyBuf is about the exit's forwarding buffer per direction (one record).
const copyBuf = 64 << 10

// pingFlood sends yamux pings as fast as the session answers them, from
// many goroutines: the exit must close that session, say why, and keep
// serving others.
func pingFlood(t *testing.T, r *rig, healthy func(*testing.T, string)) {
	const pingers = 64
	s := r.dialSession(t)
	if _, err := s.Ping(); err != nil {
		t.Fatalf("one ping: %v", err)
	}
	var answered atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range pingers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := s.Ping(); err != nil {
					return
				}
				answered.Add(1)
			}
		}()
	}
	select {
	case <-s.CloseChan():
	case <-time.After(30 * time.Second):
		t.Errorf("the exit did not close a session flooding it with pings within 30s (%d pings answered)", answered.Load())
		s.Close()
	}
	closedAfter := time.Since(start)
	wg.Wait()
	t.Logf("ping flood: %d concurrent pingers; exit closed the session after %v and %d answered pings (%.0f/s)",
		pingers, closedAfter.Round(time.Millisecond), answered.Load(), float64(answered.Load())/closedAfter.Seconds())

	r.waitStatus(t, 10*time.Second, "the flooding session gone", func(s stats) bool { return s.Sessions == 1 })
	healthy(t, "after the ping flood")
	if _, err := s.Ping(); !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Errorf("ping on the closed session: %v, want ErrSessionShutdown", err)
	}

	// The operator must learn why the session was closed: a line that says
	// "ping flood" (errPingFlood's words) at info level or above.
	peer := s.LocalAddr().String() // the exit's "peer" field for this session
	var said, closed []harness.Line
	for deadline := time.Now().Add(3 * time.Second); len(said) == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		said, closed = nil, nil
		for _, l := range r.exit.Logs() {
			if l.String("peer") != peer {
				continue
			}
			if l.Message() == "session closed" {
				closed = append(closed, l)
			}
			if harness.Contains("ping flood")(l) && l.String("level") != "debug" && l.String("level") != "trace" {
				said = append(said, l)
			}
		}
	}
	if len(said) == 0 {
		var raw []string
		for _, l := range closed {
			raw = append(raw, l.Raw)
		}
		t.Errorf(`the exit closed the ping-flooding session (peer %s) without a line saying "ping flood" at info level or above; its "session closed" line: %s`,
			peer, strings.Join(raw, "\n"))
	} else {
		t.Logf("ping flood: exit logged: %s", said[0].Raw)
	}
}

// TestShutdownStalledBackend stops an exit (SIGTERM, --drain-timeout 2s)
// while a session has streams whose backend does not read: the drain
// timeout must bound the shutdown, not the 2-minute write-stall timeout of
// the streams blocked writing to that backend.
func TestShutdownStalledBackend(t *testing.T) {
	const (
		drain = 2 * time.Second
		// grace covers closing sessions and streams after the drain.
		grace = 10 * time.Second
	)
	be := &peerBackend{}
	r := startRig(t, be.handle, "--drain-timeout", drain.String())
	t.Cleanup(be.closeHoles)
	s := r.dialSession(t)
	chunk := bytes.Repeat([]byte{0x5a}, 64<<10)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range 5 {
		st, err := s.open(fmt.Sprintf("10.0.4.1:%d", 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		if code, msg, err := readStatus(st, 10*time.Second); err != nil || code != 0 {
			t.Fatalf("stream %d: status %d %q, err %v", i, code, msg, err)
		}
		wg.Add(1)
		go func() { // fill the backend's socket and the exit's window
			defer wg.Done()
			st.Write([]byte(blackholeMagic))
			st.SetWriteDeadline(time.Now().Add(3 * time.Second))
			for {
				if _, err := st.Write(chunk); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := r.mustStatus(t).Streams; got != 5 {
		t.Fatalf("exit has %d streams open, want 5", got)
	}
	start := time.Now()
	if err := r.exit.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := r.exit.Wait(drain + grace)
	took := time.Since(start)
	if code == -2 {
		t.Errorf("exit still running %v after SIGTERM with --drain-timeout %v: streams blocked writing to a backend that does not read outlive the drain (they end at the 2-minute write-stall timeout)",
			took.Round(time.Millisecond), drain)
		return
	}
	t.Logf("shutdown with 5 streams stalled on their backend: exit code %d after %v (--drain-timeout %v)", code, took.Round(time.Millisecond), drain)
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}
