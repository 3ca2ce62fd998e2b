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
// the record layer is sticky: Write returns it, and yamux ends the session.
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
	*frame.Conn
	streams *streamTable

	mu      sync.Mutex
	wake    *sync.Cond // on mu: frames queued, space freed, closing, writer done
	queue   []byte     // whole frames waiting for the writer (and the frame in progress)
	ready   int        // queue[:ready] ends at a frame boundary
	spare   []byte     // the writer's other buffer
	big     []byte     // a large body, after queue[:ready], until the writer has sealed it
	out     tracker    // the frames yamux writes
	resets  []uint32   // streams to reset at the next frame boundary
	err     error      // sticky: the record layer failed
	closing bool
	done    chan struct{} // closed when the writer has returned
	closed  sync.Once

	in     tracker // the peer's frames; yamux reads from one goroutine
	pings  pingBucket
	local  localResets
	goAway chan struct{} // closed when the peer sends GoAway
	gaOnce sync.Once
}

var errClosed = errors.New("tunnel: session connection closed")

// newRecordConn wraps c and starts the writer; Close stops it. c may be
// nil in tests of the read side only, and then nothing starts.
func newRecordConn(c *frame.Conn, streams *streamTable) *recordConn {
	m := &recordConn{Conn: c, streams: streams, goAway: make(chan struct{}), done: make(chan struct{})}
	m.wake = sync.NewCond(&m.mu)
	if c != nil {
		go m.writer()
	} else {
		close(m.done)
	}
	return m
}

// Read passes the peer's bytes to yamux, watching its frames; between two
// of the peer's frames it passes the RSTs of localResets.
func (m *recordConn) Read(p []byte) (int, error) {
	if m.in.atBoundary() {
		if n := m.local.read(p); n > 0 {
			return n, nil
		}
	}
	n, err := m.Conn.Read(p)
	for rest := p[:n]; len(rest) > 0; {
		k, complete := m.in.step(rest)
		rest = rest[k:]
		if complete {
			if ferr := m.peerFrame(&m.in.hdr); ferr != nil {
				return 0, ferr // yamux ends the session with this reason, and closes the conn
			}
		}
	}
	return n, err
}

var errPingFlood = errors.New("tunnel: peer sent pings faster than the limit (ping flood); session closed")

// peerFrame sees each of the peer's frame headers.
func (m *recordConn) peerFrame(h *header) error {
	switch h.typ() {
	case typePing:
		if h.flags()&flagSYN != 0 && !m.pings.take(time.Now()) {
			return errPingFlood
		}
		return nil
	case typeGoAway:
		m.gaOnce.Do(func() { close(m.goAway) })
		return nil
	}
	id, flags := h.stream(), h.flags()
	if flags&flagSYN != 0 {
		// A stream the peer opens; this side's ACK goes out when it
		// accepts the stream, so it counts as acknowledged.
		m.streams.watch(id)
		m.streams.set(id, stateAcked)
	}
	if flags&flagACK != 0 {
		m.streams.set(id, stateAcked) // a stream this side opened
	}
	if flags&flagFIN != 0 {
		m.streams.set(id, statePeerFIN)
	}
	return nil
}

// pingBucket is a token bucket for the peer's ping requests.
type pingBucket struct {
	tokens float64
	last   time.Time
}

func (b *pingBucket) take(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens, b.last = pingBurst, now
	}
	b.tokens = min(pingBurst, b.tokens+now.Sub(b.last).Seconds()*pingRate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Write queues p, a part of yamux's frame stream, for the writer.
func (m *recordConn) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.queue) >= maxQueued && m.err == nil && !m.closing {
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

// writer hands whole queued frames to the record layer until Close.
func (m *recordConn) writer() {
	defer close(m.done)
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		for m.ready == 0 && m.big == nil && !m.closing {
			m.wake.Wait()
		}
		if m.ready == 0 && m.big == nil {
			return // closing, and every whole frame is out
		}
		out, big := m.queue[:m.ready], m.big
		m.queue = append(m.spare[:0], m.queue[m.ready:]...)
		m.ready = 0
		m.mu.Unlock()
		_, err := m.Conn.WriteBuffers(out, big)
		m.mu.Lock()
		m.spare = out
		if big != nil {
			m.big = nil // Write waits for this; no other big can be set meanwhile
		}
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
		err = m.Conn.Close()
		<-m.done
	})
	return err
}

// localResets are RST frames for this side's yamux, one per stream this
// side reset, so that yamux ends its stream as if the peer had reset it.
// Read passes them in between two of the peer's frames: at the latest with
// the peer's next frame (a keepalive comes every keepalive interval). Safe
// for concurrent use; read is called by yamux's single read goroutine.
type localResets struct {
	mu      sync.Mutex
	pending []uint32
	frame   header
	left    []byte // of frame, not yet read
}

func (l *localResets) add(id uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = append(l.pending, id)
}

// read copies the next RST frame, or what is left of it, into p.
func (l *localResets) read(p []byte) int {
	if len(l.left) == 0 {
		l.mu.Lock()
		if len(l.pending) == 0 {
			l.mu.Unlock()
			return 0
		}
		id := l.pending[0]
		l.pending = l.pending[1:]
		if len(l.pending) == 0 {
			l.pending = nil // give the backing array back
		}
		l.mu.Unlock()
		l.frame = rstFrame(id)
		l.left = l.frame[:]
	}
	n := copy(p, l.left)
	l.left = l.left[n:]
	return n
}
