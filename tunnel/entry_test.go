package tunnel

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/keeper"
)

// logLines keeps an agent's JSON log lines. Safe for concurrent use.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
}

// Write takes one line: zerolog writes each event with one Write.
func (l *logLines) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return 0, fmt.Errorf("log line %q: %w", p, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, m)
	return len(p), nil
}

// with returns the lines whose message is msg.
func (l *logLines) with(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// runEntry serves an entry dialing peer with the test keys, logging to lines
// (nil: nowhere), until the test ends; adjust may change its settings and
// tune the entry before it serves. It
// returns the entry and the address applications connect to.
func runEntry(t *testing.T, peer string, lines *logLines, adjust func(*EntrySettings), tune func(*Entry)) (*Entry, string) {
	t.Helper()
	ks := testKeys()
	ns := EntrySettings{}
	ns.Peers = []string{peer}
	ns.DialTimeout, ns.DrainTimeout = 2*time.Second, time.Second
	if adjust != nil {
		adjust(&ns)
	}
	log := zerolog.Nop()
	if lines != nil {
		log = zerolog.New(lines)
	}
	n, err := NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, log)
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(n)
	}
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return n, ln.Addr().String()
}

// waitingApp connects to the entry at addr and waits, as an application
// whose connection the entry holds until there is a session, until the
// entry closes it or stop is closed.
func waitingApp(t *testing.T, addr string, stop <-chan struct{}) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			c.Close()
		case <-done:
		}
	}()
	io.Copy(io.Discard, c)
}

// appsWaiting keeps one application connection waiting at the entry at
// addr until the returned function is called.
func appsWaiting(t *testing.T, addr string) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-quit:
				return
			default:
			}
			waitingApp(t, addr, quit)
		}
	}()
	return func() { close(quit); wg.Wait() }
}

// acceptCounter is backend with a count of the connections accepted.
func acceptCounter(t *testing.T, handle func(net.Conn)) (addr string, accepted *atomic.Int64) {
	accepted = new(atomic.Int64)
	addr = backend(t, func(c *net.TCPConn) {
		accepted.Add(1)
		handle(c)
	})
	return addr, accepted
}

// TestRefusedDialRetriedQuietly: while the exit is down and an application
// waits, the entry redials every ~100 ms (a refused dial is cheap) but logs
// the failure once and then once per backoff step, and counts dial failures
// as such, not as handshake failures; an exit that starts listening is used
// by the application still waiting.
func TestRefusedDialRetriedQuietly(t *testing.T) {
	probe := loopback(t)
	exitAddr := probe.Addr().String()
	probe.Close()
	var lines logLines
	n, addr := runEntry(t, exitAddr, &lines, nil, nil)

	stop := appsWaiting(t, addr)
	time.Sleep(2 * time.Second)
	stop()
	st := n.Stats()
	logged := lines.with("cannot establish a session with the exit")
	t.Logf("2s with an application waiting: %d dials failed, %d lines logged", st.DialFailures, len(logged))
	if st.DialFailures < 8 {
		t.Errorf("%d dial attempts in 2s while an application waited, want one about every 100ms", st.DialFailures)
	}
	if st.HandshakeFailures != 0 || st.HandshakeTimeouts != 0 || st.HandshakeRejections != 0 {
		t.Errorf("refused dials counted as handshake failures: %+v", st)
	}
	if len(logged) == 0 || len(logged) > 6 {
		t.Errorf("%d lines logged for %d refused dials in 2s, want the first and then about one per backoff step (at most 6)",
			len(logged), st.DialFailures)
	}
	var attempts float64
	for _, l := range logged {
		d, err := time.ParseDuration(fmt.Sprint(l["retry_in"]))
		if err != nil || d <= 0 || d > keeper.MaxDialWait {
			t.Errorf("retry_in=%v: want a duration with its unit, up to %v", l["retry_in"], keeper.MaxDialWait)
		}
		n, ok := l["failed_attempts"].(float64)
		if !ok {
			t.Errorf("line %v: no failed_attempts", l)
		}
		attempts += n
	}
	if attempts > float64(st.DialFailures) {
		t.Errorf("lines count %v failed attempts, more than the %d made", attempts, st.DialFailures)
	}

	// The exit comes up while an application waits: it gets through.
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", exitAddr)
		if err != nil {
			t.Errorf("re-listen on %s: %v", exitAddr, err)
			return
		}
		ks := testKeys()
		xs := ExitSettings{}
		xs.Services = []ExitService{{Backend: echoBackend(t)}}
		xs.DrainTimeout = time.Second
		x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
		if err != nil {
			t.Error(err)
			ln.Close()
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { x.Serve(ctx, ln); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}()
	roundTrip(t, addr, []byte("waited for the exit"))
	if up := lines.with("session established"); len(up) != 1 || up[0]["failed_attempts"] == nil {
		t.Errorf("session established lines %v: want one, with the failed attempts before it", up)
	}
}

// TestHandshakeFailureBacksOff: a peer that accepts TCP and closes it fails
// every handshake; the entry must wait its backoff between attempts, as
// logged, even while applications wait.
func TestHandshakeFailureBacksOff(t *testing.T) {
	exitAddr, accepted := acceptCounter(t, func(c net.Conn) { c.Close() })
	var lines logLines
	n, addr := runEntry(t, exitAddr, &lines, nil, nil)
	stop := appsWaiting(t, addr)
	time.Sleep(2500 * time.Millisecond)
	stop()
	got := accepted.Load()
	st := n.Stats()
	logged := lines.with("cannot establish a session with the exit")
	t.Logf("2.5s with an application waiting: %d handshakes, %d lines logged", got, len(logged))
	// Waits are at least half the backoff: 50, 100, 200, 400, 800 and
	// 1600 ms, so a seventh attempt starts after 3.15s at the earliest.
	if got > 6 {
		t.Errorf("%d handshakes in 2.5s, want at most 6: the backoff is not honoured", got)
	}
	if got < 2 {
		t.Errorf("%d handshakes in 2.5s, want the entry to retry", got)
	}
	if st.DialFailures != 0 || st.HandshakeFailures < got-1 || st.HandshakeFailures > got {
		t.Errorf("after %d failed handshakes: %+v, want them counted as handshake failures", got, st)
	}
	if len(logged) > int(got) {
		t.Errorf("%d lines for %d failed handshakes", len(logged), got)
	}
}

// TestYoungSessionBacksOff: a session cut soon after its handshake is
// redialled after a growing backoff, not at once. (With resumption, the
// session is resumed instead: TestResumeFlappingBacksOff.)
func TestYoungSessionBacksOff(t *testing.T) {
	a := start(t, echoBackend(t))
	relay, accepted := cuttingRelay(t, a.exitAddr, 200*time.Millisecond)
	var lines logLines
	runEntry(t, relay, &lines, func(ns *EntrySettings) { ns.ResumeWindow = -1 }, nil)
	time.Sleep(3500 * time.Millisecond)
	got := accepted.Load()
	var young []map[string]any
	for _, l := range lines.with("session with the exit lost; reconnecting") {
		if l["retry_in"] != nil {
			young = append(young, l)
		}
	}
	t.Logf("3.5s of sessions cut after 200ms: %d sessions, %d logged as lost young", got, len(young))
	// Each attempt lives 200ms and then waits at least half the backoff:
	// the seventh starts after 4.35s at the earliest.
	if got > 6 {
		t.Errorf("%d sessions in 3.5s, want at most 6: a session that dies young is redialled without backoff", got)
	}
	if len(young) == 0 {
		t.Error("no line with retry_in for the sessions lost young")
	}
}

// TestFailureCounters: a dial that fails, a handshake that times out and
// one the exit rejects each count as what they are.
func TestFailureCounters(t *testing.T) {
	probe := loopback(t)
	closed := probe.Addr().String()
	probe.Close()
	n, _ := runEntry(t, closed, nil, nil, nil)
	waitFor(t, "a dial failure counted", func() bool { return n.Stats().DialFailures > 0 })
	if st := n.Stats(); st.HandshakeFailures != 0 {
		t.Errorf("refused dial: %+v, want no handshake failure", st)
	}

	silent, _ := acceptCounter(t, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
	n, _ = runEntry(t, silent, nil, func(s *EntrySettings) { s.HandshakeTimeout = 100 * time.Millisecond }, nil)
	waitFor(t, "a handshake timeout counted", func() bool { return n.Stats().HandshakeTimeouts > 0 })
	if st := n.Stats(); st.DialFailures != 0 || st.HandshakeRejections != 0 || st.HandshakeFailures < st.HandshakeTimeouts {
		t.Errorf("silent peer: %+v, want handshake timeouts only", st)
	}

	// An exit that authorizes another key.
	other, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	xs := ExitSettings{}
	xs.Services, xs.DrainTimeout = []ExitService{{Backend: echoBackend(t)}}, time.Second
	x, err := newExitForTest(xs, testKeys()[1], &other.PublicKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	n, _ = runEntry(t, ln.Addr().String(), nil, nil, nil)
	waitFor(t, "a handshake rejection counted", func() bool { return n.Stats().HandshakeRejections > 0 })
	if st := n.Stats(); st.DialFailures != 0 || st.HandshakeTimeouts != 0 || st.HandshakeFailures < st.HandshakeRejections {
		t.Errorf("rejected key: %+v, want handshake rejections only", st)
	}
}

// TestSessionRecycled: after its share of streams a session is replaced;
// the replacement is made first, no connection fails meanwhile, a
// connection open across many replacements keeps working, and the old
// sessions end once their streams have.
func TestSessionRecycled(t *testing.T) {
	const bound, workers, each = 16, 8, 40
	a := startTuned(t, echoBackend(t), nil, func(_ *Exit, n *Entry) { n.keeper.RecycleAfter = bound })
	held, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(60 * time.Second))
	echo := func(msg string) {
		t.Helper()
		if _, err := held.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(held, got); err != nil || string(got) != msg {
			t.Fatalf("held connection: %q, %v", got, err)
		}
	}
	echo("first")

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				roundTrip(t, a.entryAddr, []byte(fmt.Sprintf("worker %d, connection %d", w, i)))
			}
		}()
	}
	wg.Wait()
	echo("still here")
	st := a.entry.Stats()
	t.Logf("%d connections at %d streams a session: %+v", workers*each+1, bound, st)
	// While a replacement is made, streams still go to the session it
	// replaces: each carries more than bound.
	if st.SessionsRecycled < 3 {
		t.Errorf("%d sessions recycled after %d streams at %d a session, want several", st.SessionsRecycled, workers*each+1, bound)
	}
	if st.HandshakeFailures != 0 || st.DialFailures != 0 {
		t.Errorf("%+v: a replacement failed", st)
	}
	// The first session still carries the held connection; the others
	// have ended.
	waitFor(t, "two sessions left at the entry and the exit", func() bool {
		return a.entry.Stats().Sessions == 2 && a.exit.Stats().Sessions == 2
	})
	held.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(held); err != nil || len(rest) != 0 {
		t.Fatalf("held connection at its end: %q, %v", rest, err)
	}
	waitFor(t, "one session left once the held connection ended", func() bool {
		return a.entry.Stats().Sessions == 1 && a.exit.Stats().Sessions == 1
	})
}

// TestRecycleFailureKeepsSession: when the replacement session cannot be
// made, the current one stays in use, and the replacement is tried again.
func TestRecycleFailureKeepsSession(t *testing.T) {
	a := start(t, echoBackend(t))
	relay := newLink(t, a.exitAddr)
	var lines logLines
	n, addr := runEntry(t, relay.ln.Addr().String(), &lines, nil, func(n *Entry) { n.keeper.RecycleAfter = 4 })
	roundTrip(t, addr, []byte("first"))
	probe := loopback(t)
	dead := probe.Addr().String()
	probe.Close()
	relay.target.Store(dead) // new connections to the exit fail during the handshake
	for i := range 12 {
		roundTrip(t, addr, []byte(fmt.Sprintf("connection %d on the session that could not be replaced", i)))
	}
	waitFor(t, "a failed replacement", func() bool { return n.Stats().HandshakeFailures > 0 })
	if st := n.Stats(); st.SessionsRecycled != 0 || st.Sessions != 1 {
		t.Fatalf("replacement never made: %+v, want the first session still in use", st)
	}
	if len(lines.with("cannot establish a replacement session; the current one stays in use")) == 0 {
		t.Error("the failed replacement was not logged")
	}
	relay.target.Store(a.exitAddr)
	waitFor(t, "the replacement made on a later try", func() bool { return n.Stats().SessionsRecycled == 1 })
	roundTrip(t, addr, []byte("on the replacement"))
}

// TestResetStreamsEndLocally: an application that resets its connection
// makes the entry reset the stream towards the exit, which then never sends
// its FIN; the entry's own yamux stream must end too, not wait out yamux's
// 5-minute close timeout. Else each such stream stays in the session, and
// one reset before the exit accepted the stream holds one of yamux's 256
// stream-open slots: past 256 of them every new connection waits.
func TestResetStreamsEndLocally(t *testing.T) {
	a := start(t, echoBackend(t))
	roundTrip(t, a.entryAddr, []byte("first"))
	for range 300 {
		c, err := net.Dial("tcp", a.entryAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("about to reset"))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		roundTrip(t, a.entryAddr, []byte("after 300 resets"))
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("a connection after 300 reset ones not served within 20s: yamux's stream-open slots are held")
	}
	s := a.entry.keeper.Current()
	waitFor(t, "the reset streams gone from the entry's session", func() bool {
		roundTrip(t, a.entryAddr, []byte("traffic")) // the peer's frames carry the local reset in
		return s.Sess.NumStreams() == 0
	})
}
