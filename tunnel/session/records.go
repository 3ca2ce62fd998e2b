package session

// recordConn is the connection yamux runs on: it sits between yamux and a
// frame.Conn and follows yamux's framing both ways (tracker).
//
// Write side: yamux's single send loop writes each frame as one or more
// Writes and waits for each. recordConn copies them into a queue and
// returns; its writer goroutine hands everything queued to the record layer
// in one Write, so that while it seals and sends, the frames of other
// streams gather behind it and go out together: several small frames
// become one record and one system call. The writer is woken only at frame
// boundaries, so a frame's header and body are sealed together. A Write
// that holds exactly the rest of a large body (yamux writes a data frame's
// body in one Write today, but does not promise it) is not copied: the
// writer seals it straight from yamux's buffer, together with what is
// queued before it, and Write returns once it has; any other Write is
// copied, so correctness does not depend on how yamux splits its frames.
// A RST this side sends goes out at the next frame boundary. A failure of
// the record layer is sticky: Write returns it, and yamux ends the session;
// unless the session can resume (resume.go), and then a broken link parks
// the session instead, until a new link takes over or the window ends.
//
// Read side: before yamux sees the peer's bytes, recordConn limits the
// peer's pings (see pingRate), records which streams the peer acknowledged
// and finished (streamTable), and notices the peer's GoAway. Between two
// of the peer's frames it hands yamux the RSTs of the streams this side
// reset (localResets), so that yamux ends them as if the peer had.

import (
	"errors"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

// Ping limits: yamux answers every ping with a new goroutine, so a peer's
// ping flood would cost unbounded goroutines. Keepalives need one ping per
// interval; a peer sending more than pingBurst beyond pingRate per second
// is cut off.
const (
	pingRate  = 20
	pingBurst = 100
)

// maxQueued bounds the bytes queued for the writer: past it, Write waits.
const maxQueued = 1 << 20

// bigBody is the size from which a frame's body is sealed from yamux's
// buffer instead of being copied into the queue.
const bigBody = 64 << 10

// flushTimeout bounds how long Close waits for queued frames to go out to
// a peer that does not read.
const flushTimeout = 2 * time.Second

type recordConn struct {
	streams *streamTable
	res     *resumption // nil: the session cannot resume

	mu      sync.Mutex
	wake    *sync.Cond  // on mu: frames queued, space freed, closing, writer done
	queue   []byte      // whole frames waiting for the writer (and the frame in progress)
	ready   int         // queue[:ready] ends at a frame boundary
	spare   []byte      // the writer's other buffer
	big     []byte      // a large body, after queue[:ready], until the writer has sealed it
	out     tracker     // the frames yamux writes
	resets  []uint32    // streams to reset at the next frame boundary
	link    *frame.Conn // the writer's; with res, replaced when the session resumes
	err     error       // sticky: the record layer failed, or the resumption window ended
	closing bool
	done    chan struct{} // closed when the writer has returned
	closed  sync.Once

	rlink  *frame.Conn // the link Read reads; only the reading goroutine uses it
	in     tracker     // the peer's frames; yamux reads from one goroutine
	pings  pingBucket
	local  localResets
	goAway chan struct{} // closed when the peer sends GoAway
	gaOnce sync.Once
}

var errClosed = errors.New("tunnel: session connection closed")

// newRecordConn wraps c and starts the writer; Close stops it. c may be
// nil in tests of the read side only, and then nothing starts. res, when
// not nil, makes the session resumable over c, which must have negotiated
// it (ACK records).
func newRecordConn(c *frame.Conn, streams *streamTable, res *resumption) *recordConn {
	m := &recordConn{link: c, rlink: c, streams: streams, res: res, goAway: make(chan struct{}), done: make(chan struct{})}
	m.wake = sync.NewCond(&m.mu)
	if res != nil {
		res.start(m, c)
	}
	if c != nil {
		go m.writer()
	} else {
		close(m.done)
	}
	return m
}

// Write queues p, a part of yamux's frame stream, for the writer.
func (m *recordConn) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for (len(m.queue) >= maxQueued || m.res.full(len(m.queue))) && m.err == nil && !m.closing {
		m.wake.Wait()
	}
	if m.err != nil {
		return 0, m.err
	}
	if m.closing {
		return 0, errClosed
	}
	if m.out.have == 0 && m.out.bodyLeft == len(p) && len(p) >= bigBody {
		if err := m.writeBig(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	m.queue = append(m.queue, p...)
	for rest := p; len(rest) > 0; {
		k, complete := m.out.step(rest)
		rest = rest[k:]
		if complete && m.out.hdr.flags()&flagSYN != 0 {
			// A stream this side opens is watched from its SYN, before
			// the peer's ACK can come back.
			m.streams.watch(m.out.hdr.stream())
		}
		if m.out.atBoundary() {
			m.boundary(len(m.queue) - len(rest))
		}
	}
	return len(p), nil
}

// writeBig hands the writer the queue and body, the whole rest of the
// current frame's body, and waits until it has sealed them. The tracker
// stays mid-body meanwhile, so that a reset waits for the boundary after
// body. Callers hold mu.
func (m *recordConn) writeBig(body []byte) error {
	m.big, m.ready = body, len(m.queue)
	m.wake.Broadcast()
	for m.big != nil && m.err == nil {
		m.wake.Wait()
	}
	if m.err != nil {
		return m.err // the writer has returned, perhaps before taking body
	}
	m.out.step(body)
	m.boundary(len(m.queue))
	return nil
}

// boundary marks queue[:end] as whole frames, adds the resets waiting for
// a boundary, and wakes the writer. Callers hold mu.
func (m *recordConn) boundary(end int) {
	if len(m.resets) > 0 && end == len(m.queue) {
		for _, id := range m.resets {
			h := rstFrame(id)
			m.queue = append(m.queue, h[:]...)
		}
		m.resets = m.resets[:0]
		end = len(m.queue)
	}
	m.ready = end
	m.wake.Broadcast()
}

// writer hands whole queued frames to the record layer until Close. On a
// resumable session it also sends the ACKs due, sends again what the peer
// did not receive once a new link takes over, and waits while the link is
// down (resume.go).
func (m *recordConn) writer() {
	defer close(m.done)
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		for !m.writable() && !m.closing && m.err == nil {
			m.wake.Wait()
		}
		if m.err != nil || m.closing && (m.ready == 0 && m.big == nil || !m.res.up()) {
			return // closing, and every whole frame is out (or cannot go out)
		}
		if m.res != nil && m.res.control(m) {
			continue // an ACK, or what the peer missed, went out (or the link broke)
		}
		link := m.link
		out, big := m.queue[:m.ready], m.big
		m.queue = append(m.spare[:0], m.queue[m.ready:]...)
		m.ready = 0
		var spare []byte
		if m.res != nil {
			// Kept before it goes: the peer's ACK for it may come before
			// the write returns. Whether the peer got it, its ACK says.
			spare = m.res.keep(out, big)
		}
		m.mu.Unlock()
		_, err := link.WriteBuffers(out, big)
		m.mu.Lock()
		if big != nil {
			m.big = nil // Write waits for this; no other big can be set meanwhile
		}
		if m.res != nil {
			m.spare = spare
			if err != nil {
				m.res.down(m, link, err) // what went into the broken link is kept too
			}
			m.wake.Broadcast()
			continue
		}
		m.spare = out
		if err != nil {
			// The connection is broken (no write deadline is set on it):
			// the read side fails too, with the reason the peer gave (a
			// reset, a cut, a record that failed), which closing it here
			// would hide behind "use of closed network connection".
			m.err = err
			m.wake.Broadcast()
			return
		}
		m.wake.Broadcast()
	}
}

// writable reports whether the writer has frames to hand to an established
// link, or other work (resume.go). Callers hold mu.
func (m *recordConn) writable() bool {
	if m.res != nil {
		return m.res.work(m.ready > 0 || m.big != nil)
	}
	return m.ready > 0 || m.big != nil
}

// reset aborts stream id towards the peer with a RST (the peer's stream
// then fails with yamux.ErrConnectionReset). yamux v0.1.2 has no call for
// it, but its frames pass here: the RST goes out between two of them. The
// peer then never sends the stream's FIN, so the local yamux gets a RST too
// (see localResets): else it would keep the stream, and, before the peer's
// ACK, one of its stream-open slots, for its 5-minute close timeout.
//
// A stream this side opened is reset only once the peer's ACK came: before,
// the peer has not accepted it, and yamux would give back the stream's
// open slot at once while the stream still sits in the peer's accept
// backlog, so that the backlog could overflow (the peer then resets new
// streams). Such a stream ends with the caller's FIN instead.
func (m *recordConn) reset(id uint32, s *streamState) {
	if !s.is(stateAcked) {
		return
	}
	m.local.add(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil || m.closing {
		return
	}
	m.resets = append(m.resets, id)
	if m.out.atBoundary() {
		m.boundary(len(m.queue))
	}
}

// Close lets the writer send what is queued, for up to flushTimeout, then
// closes the record layer (sending CLOSE) and waits for the writer.
func (m *recordConn) Close() error {
	var err error
	m.closed.Do(func() {
		m.mu.Lock()
		m.closing = true
		m.wake.Broadcast()
		m.mu.Unlock()
		select {
		case <-m.done:
		case <-time.After(flushTimeout):
		}
		m.mu.Lock()
		link := m.link
		m.res.stop()
		m.mu.Unlock()
		err = link.Close()
		<-m.done
	})
	return err
}

// current is the link the writer uses now.
func (m *recordConn) current() *frame.Conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.link
}

// failure is what ended a resumable session other than its link: the
// window ran out, or the peer's ACK made no sense.
func (m *recordConn) failure() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.res == nil {
		return nil
	}
	if m.res.violation != nil {
		return m.res.violation
	}
	return m.err
}
