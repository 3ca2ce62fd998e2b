package session

// Resumption (PROTOCOL-v2.md section 6): a session that negotiated it
// outlives the TCP connection it runs on. The connection between yamux and
// the record layer (a link) may break (a reset, EOF without CLOSE, a write
// error, a keepalive with no answer); the session then parks: yamux sees
// nothing but a pause, its Reads and Writes wait, and the agent brings a
// new link (Session.Resume) within the resumption window. Each side keeps
// what it sent that the peer has not acknowledged (at most maxKept bytes;
// Write waits past that), and acknowledges what it received in ACK records
// (every ackEvery bytes, and in answer to a probe). On a new link each
// side's first record after FINISHED is an ACK with what it received; the
// other sends again from there. No byte is lost, repeated or reordered. A
// session whose window ends fails as a broken session does today.

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
)

const (
	// maxKept bounds, per session, the bytes sent and not yet acknowledged
	// that are kept for sending again (counted by the memory they hold).
	// Past it Write waits for the peer's ACK. What is in flight includes
	// both kernels' socket buffers, which Linux grows to several MiB on a
	// fast link: with 4 MiB, bulk through loopback ran 17% slower than
	// without resumption (the sender waited on ACKs for bytes still in
	// the peer's receive buffer), with 8 MiB 3-8%, with 64 MiB 5%. 8 MiB
	// also keeps a link of 1 Gbit/s with a round trip of 60 ms busy.
	maxKept = 8 << 20
	// ackEvery is how many bytes received call for an ACK; what is received
	// short of it is acknowledged within ackDelay, so that a sender that
	// has stopped keeps nothing for long.
	ackEvery = 256 << 10
	ackDelay = 50 * time.Millisecond
	// probeTimeout is how long a keepalive probe waits for any record
	// before the link counts as broken (or two keepalive intervals, if
	// shorter).
	probeTimeout = 10 * time.Second
	// keptChunk is the size of the buffers small writes are packed into;
	// maxFreeChunks of them are kept for reuse while data flows, none once
	// it has stopped for a tick.
	keptChunk     = 64 << 10
	maxFreeChunks = 8
)

var (
	errKeepAlive  = errors.New("no record from the peer within the keepalive timeout")
	errSuperseded = errors.New("the peer resumed the session on a new connection")
)

// linkState is where a resumable session's link stands.
type linkState int

const (
	linkUp       linkState = iota
	linkDown               // broken: waiting for a new link within the window
	linkResuming           // a new link: this side's ACK is sent, the peer's awaited
)

// resumption is the resumable part of a recordConn. Its fields are guarded
// by the recordConn's mu unless said otherwise.
type resumption struct {
	window    time.Duration
	keepAlive time.Duration
	log       zerolog.Logger
	downs     chan struct{} // buffered 1: the link went down (Session.LinkDown)

	state   linkState
	fresh   *frame.Conn // a new link from Resume, for the reader to take
	downAt  time.Time   // when the link went down; zero while up
	downErr error       // why
	expiry  *time.Timer // ends the session when the window is over

	sent, acked uint64   // stream offsets: bytes [acked, sent) are in kept
	kept        [][]byte // what was sent and not acknowledged, in order
	head        int      // bytes of kept[0] acknowledged
	keptMem     int      // the memory kept holds (capacities)
	chunks      [][]byte // keptChunk buffers given back by ACKs, for pack (at most maxFreeChunks)
	spareQueue  []byte   // an adopted queue given back by an ACK, for the writer
	sentAtTick  uint64   // sent at the last tick: chunks are dropped when it has not moved
	resend      bool     // a new link is up: send kept again first
	needAck     bool     // an ACK is due (ackEvery received, or asked for)
	probe       bool     // a probe is due

	probeAt   time.Time // when the probe in flight went out; zero: none
	probeSeen uint64    // seen at the last tick that found it changed
	lastProbe time.Time // when the peer was last heard from, or probed
	violation error     // the peer's ACK made no sense: ends the session

	resumes uint64      // new links that took over
	resent  uint64      // bytes sent again on them
	past    frame.Stats // the record counts of the links before the current one

	recv     atomic.Uint64 // DATA bytes received; written by the reading goroutine
	lastAck  atomic.Uint64 // recv as of the last ACK sent
	seen     atomic.Uint64 // reads and ACKs from the peer, for the keepalive
	ackTimer atomic.Bool   // an ACK of what was received is due within ackDelay
	awaiting atomic.Bool   // on a new link: the peer's first ACK has not come
}

func newResumption(window, keepAlive time.Duration, log zerolog.Logger) *resumption {
	return &resumption{window: window, keepAlive: keepAlive, log: log, downs: make(chan struct{}, 1), lastProbe: time.Now()}
}

// start hooks the first link's ACKs.
func (r *resumption) start(m *recordConn, c *frame.Conn) {
	if c != nil {
		c.SetOnAck(func(n uint64, reply bool) { r.onAck(m, n, reply) })
	}
}

// up reports whether the link is established. Nil-safe: a session that
// cannot resume has one link, always up while it lives.
func (r *resumption) up() bool { return r == nil || r.state == linkUp }

// stop ends the window's timer, and drops a new link not yet taken, as the
// session closes. Nil-safe.
func (r *resumption) stop() {
	if r == nil {
		return
	}
	if r.expiry != nil {
		r.expiry.Stop()
	}
	if r.fresh != nil {
		r.fresh.NetConn().Close()
		r.fresh = nil
	}
}

// down parks the session because link broke with err, unless link is no
// longer the current one or the session is already parked. Callers hold mu.
func (r *resumption) down(m *recordConn, link *frame.Conn, err error) {
	if link != m.link || r.state == linkDown || m.closing || m.err != nil {
		return // not the current link, parked already, or the session is ending
	}
	link.NetConn().Close() // no CLOSE: the peer must not take this for the session's end
	if r.state == linkResuming {
		r.state = linkDown // the window runs on from the first break
		return
	}
	r.state, r.downAt, r.downErr = linkDown, time.Now(), err
	r.probeAt = time.Time{}
	r.expiry = time.AfterFunc(r.window, func() { r.expire(m) })
	r.log.Warn().Err(err).Str("resume_window", logfield.Duration(r.window)).
		Msg("connection to the peer broken: the session and its streams wait for a new connection")
	select {
	case r.downs <- struct{}{}:
	default:
	}
	m.wake.Broadcast()
}

// expire ends the session when the window is over and the link still down.
func (r *resumption) expire(m *recordConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.state == linkUp || m.err != nil {
		return
	}
	m.err = fmt.Errorf("tunnel: no new connection within the resumption window (%s) after the connection broke: %w", logfield.Duration(r.window), r.downErr)
	r.log.Warn().Err(r.downErr).Str("down_for", logfield.Duration(time.Since(r.downAt))).
		Msg("resumption window over: the session ends, and its streams are reset")
	if r.fresh != nil {
		r.fresh.NetConn().Close()
		r.fresh = nil
	}
	m.wake.Broadcast()
}

// next is the reading goroutine's way past a broken link: it parks the
// session (down) and waits for a new link, which it returns once this
// side's ACK is on it; or it returns the error that ends the session.
func (r *resumption) next(m *recordConn, link *frame.Conn, err error) (*frame.Conn, error) {
	if errors.Is(err, io.EOF) || recordFailure(err) {
		return nil, err // the peer closed the session (CLOSE), or a record failed
	}
	m.mu.Lock()
	if r.violation != nil {
		m.mu.Unlock()
		return nil, r.violation
	}
	r.down(m, link, err)
	for r.fresh == nil && m.err == nil && !m.closing {
		m.wake.Wait()
	}
	if m.err != nil || m.closing {
		failed := m.err
		m.mu.Unlock()
		if failed == nil {
			failed = errClosed
		}
		return nil, failed
	}
	fresh := r.fresh
	r.past = addStats(r.past, m.link.Stats())
	r.fresh, m.link, r.state = nil, fresh, linkResuming
	r.awaiting.Store(true)
	n := r.recv.Load()
	r.lastAck.Store(n)
	m.mu.Unlock()
	if err := fresh.WriteAck(n, false); err != nil {
		m.mu.Lock()
		r.down(m, fresh, err)
		m.mu.Unlock()
	}
	return fresh, nil
}

// recordFailure reports an error of the record layer's own checks: a
// record that failed to authenticate, or broke the protocol. Only the
// transport's failures (a reset, EOF without CLOSE, a timeout) park the
// session; a record that fails its checks ends it, as without resumption,
// so that nothing an attacker injects is taken for a broken link.
func recordFailure(err error) bool {
	for _, e := range []error{frame.ErrAuth, frame.ErrLength, frame.ErrFinished, frame.ErrProtocol, frame.ErrSeqExhausted} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// resume hands the session a new link. The reading goroutine takes it
// over (next); if the current link still looks alive (the peer noticed the
// break first), it is dropped.
func (r *resumption) resume(m *recordConn, fresh *frame.Conn) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil || m.closing {
		fresh.NetConn().Close()
		if m.err != nil {
			return m.err
		}
		return errClosed
	}
	fresh.SetOnAck(func(n uint64, reply bool) { r.onAck(m, n, reply) })
	if r.state != linkDown {
		r.down(m, m.link, errSuperseded)
	}
	if r.fresh != nil {
		r.fresh.NetConn().Close()
	}
	r.fresh = fresh
	m.wake.Broadcast()
	return nil
}

// tick runs the keepalive: a probe every keepAlive, and a link that sent
// no record within probeTimeout of one counts as broken.
func (r *resumption) tick(m *recordConn, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.sent == r.sentAtTick {
		r.chunks = nil // nothing sent for a tick: keep no buffer for it
	}
	r.sentAtTick = r.sent
	if r.state != linkUp || m.err != nil || m.closing {
		return
	}
	seen := r.seen.Load()
	if seen != r.probeSeen {
		// The peer is heard from: no probe is needed for a while.
		r.probeAt, r.lastProbe, r.probeSeen = time.Time{}, now, seen
	} else if !r.probeAt.IsZero() && now.Sub(r.probeAt) >= min(probeTimeout, 2*r.keepAlive) {
		r.down(m, m.link, errKeepAlive)
		return
	}
	if r.probeAt.IsZero() && now.Sub(r.lastProbe) >= r.keepAlive {
		r.probe, r.probeAt, r.lastProbe, r.probeSeen = true, now, now, seen
		m.wake.Broadcast()
	}
}

// LinkState is what a resumable session's link looks like.
type LinkState struct {
	Resumable bool
	Down      bool      // parked, waiting for a new connection
	DownSince time.Time // when it broke, while Down
	Resumes   uint64    // new connections that took over
	Resent    uint64    // bytes sent again on them
	Kept      int       // memory held by bytes sent and not acknowledged
}

func (r *resumption) linkState() LinkState {
	return LinkState{Resumable: true, Down: r.state != linkUp, DownSince: r.downAt, Resumes: r.resumes, Resent: r.resent, Kept: r.keptMem}
}

// addStats returns the sum of the record counts a and b.
func addStats(a, b frame.Stats) frame.Stats {
	a.RecordsSent += b.RecordsSent
	a.RecordsReceived += b.RecordsReceived
	a.KeyUpdatesSent += b.KeyUpdatesSent
	a.KeyUpdatesReceived += b.KeyUpdatesReceived
	return a
}
