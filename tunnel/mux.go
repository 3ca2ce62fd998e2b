package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/frame"
)

// yamux frame header: version u8 | type u8 | flags u16 | stream u32 | length u32.
const (
	yamuxHeaderLen        = 12
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxTypePing         = 2
	yamuxTypeGoAway       = 3
	yamuxFlagSYN          = 1
	yamuxFlagACK          = 2
	yamuxFlagFIN          = 4
	yamuxFlagRST          = 8
)

// Ping limits: yamux answers every ping with a new goroutine, so a peer's
// ping flood would cost unbounded goroutines. Keepalives need one ping per
// interval; a peer sending more than pingBurst beyond pingRate per second
// is cut off.
const (
	pingRate  = 20
	pingBurst = 100
)

// maxWatched bounds the streams whose FIN is tracked (see finWatch).
const maxWatched = 1 << 16

var errPingFlood = errors.New("tunnel: peer sent pings faster than the limit (ping flood); session closed")

// muxConn sits between yamux and a frame.Conn.
//
// Write side: yamux's single send loop writes each frame as two Writes,
// header then body, and waits for each. muxConn copies them into a queue
// and returns; its writer goroutine hands everything queued to the record
// layer in one Write, so that while it seals and sends, the frames of other
// streams gather behind it and go out together: several small frames
// become one record and one system call. A large body is not copied: the
// writer seals it straight from yamux's buffer, together with what is
// queued before it, and Write returns once it has. The writer is woken
// only at frame boundaries, so a frame's header and body are sealed
// together. reset queues a RST frame at the next boundary. A failure of
// the record layer is sticky: Write returns it, and yamux ends the session.
//
// Read side: muxConn follows yamux's framing too, before yamux sees the
// bytes: it limits the peer's pings (see pingRate), records which streams
// received the peer's FIN (a stream of a dead session reads io.EOF just
// like one that was closed properly: finWatch tells them apart), and
// notices the peer's GoAway.
type muxConn struct {
	*frame.Conn

	mu       sync.Mutex
	wake     *sync.Cond // on mu: frames queued, space freed, closing, writer done
	queue    []byte     // whole frames waiting for the writer (and the frame in progress)
	ready    int        // queue[:ready] ends at a frame boundary
	spare    []byte     // the writer's other buffer
	big      []byte     // a large body, after queue[:ready], until the writer has sealed it
	hdr      [yamuxHeaderLen]byte
	have     int      // bytes of the frame header in progress seen
	bodyLeft int      // bytes of the current data frame's body still to come
	resets   []uint32 // streams to reset at the next frame boundary
	err      error    // sticky: the record layer failed
	closing  bool
	done     chan struct{} // closed when the writer has returned
	closed   sync.Once

	in     frameScanner // read side; yamux reads from one goroutine
	local  localResets  // RSTs for yamux itself, for the streams this side reset
	fins   finWatch
	live   carried       // the streams being forwarded
	goAway chan struct{} // closed when the peer sends GoAway
	gaOnce sync.Once
}

// maxQueued bounds the bytes queued for the writer: past it, Write waits.
const maxQueued = 1 << 20

// bigBody is the size from which a frame's body is sealed from yamux's
// buffer instead of being copied into the queue.
const bigBody = 64 << 10

var errMuxClosed = errors.New("tunnel: session connection closed")

// newMuxConn wraps c and starts the writer; Close stops it. c may be nil
// in tests of the read side only, and then nothing starts.
func newMuxConn(c *frame.Conn) *muxConn {
	m := &muxConn{Conn: c, goAway: make(chan struct{}), done: make(chan struct{})}
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
func (m *muxConn) Read(p []byte) (int, error) {
	if m.in.have == 0 && m.in.bodyLeft == 0 {
		if n := m.local.read(p); n > 0 {
			return n, nil
		}
	}
	n, err := m.Conn.Read(p)
	if n > 0 {
		if ferr := m.in.scan(p[:n], m.frameHeader); ferr != nil {
			return 0, ferr // yamux ends the session with this reason, and closes the conn
		}
	}
	return n, err
}

// frameHeader sees each of the peer's frame headers.
func (m *muxConn) frameHeader(h []byte) error {
	flags := binary.BigEndian.Uint16(h[2:])
	id := binary.BigEndian.Uint32(h[4:])
	switch h[1] {
	case yamuxTypePing:
		if flags&yamuxFlagSYN != 0 && !m.in.takePing(time.Now()) {
			return errPingFlood
		}
		return nil
	case yamuxTypeGoAway:
		m.gaOnce.Do(func() { close(m.goAway) })
		return nil
	}
	if flags&yamuxFlagSYN != 0 {
		m.fins.watch(id) // a stream the peer opens
		m.fins.acked(id) // this side's ACK goes out when it accepts the stream
	}
	if flags&yamuxFlagACK != 0 {
		m.fins.acked(id) // a stream this side opened
	}
	if flags&yamuxFlagFIN != 0 {
		m.fins.finished(id)
	}
	return nil
}

// frameScanner follows yamux frame boundaries in a byte stream, and keeps
// a token bucket for ping requests.
type frameScanner struct {
	hdr      [yamuxHeaderLen]byte
	have     int
	bodyLeft int

	tokens float64
	last   time.Time
}

// scan feeds p through, calling header for every complete frame header.
func (s *frameScanner) scan(p []byte, header func([]byte) error) error {
	for len(p) > 0 {
		if s.bodyLeft > 0 {
			n := min(len(p), s.bodyLeft)
			s.bodyLeft -= n
			p = p[n:]
			continue
		}
		k := copy(s.hdr[s.have:], p)
		s.have += k
		p = p[k:]
		if s.have < yamuxHeaderLen {
			return nil
		}
		s.have = 0
		if s.hdr[1] == yamuxTypeData {
			s.bodyLeft = int(binary.BigEndian.Uint32(s.hdr[8:]))
		}
		if err := header(s.hdr[:]); err != nil {
			return err
		}
	}
	return nil
}

// finWatch records, for the streams being watched, whether the peer's FIN
// has arrived, and whether the stream is acknowledged (for a stream this
// side opened, the peer's ACK came). Streams are watched from their SYN,
// the peer's (Read) or this side's (Write); forget ends it. Past
// maxWatched streams new ones go unwatched, which errs on the side of
// treating their end as an abort. Safe for concurrent use.
type finWatch struct {
	mu  sync.Mutex
	fin map[uint32]uint8 // finSeen | finAcked
}

const (
	finSeen  = 1
	finAcked = 2
)

func (w *finWatch) watch(id uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fin == nil {
		w.fin = make(map[uint32]uint8)
	}
	if _, ok := w.fin[id]; !ok && len(w.fin) < maxWatched {
		w.fin[id] = 0
	}
}

// set adds bit to id's state, if id is watched.
func (w *finWatch) set(id uint32, bit uint8) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if v, ok := w.fin[id]; ok {
		w.fin[id] = v | bit
	}
}

func (w *finWatch) finished(id uint32) { w.set(id, finSeen) }
func (w *finWatch) acked(id uint32)    { w.set(id, finAcked) }

// seen reports whether the peer's FIN for id arrived.
func (w *finWatch) seen(id uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fin[id]&finSeen != 0
}

// isAcked reports whether id is acknowledged.
func (w *finWatch) isAcked(id uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fin[id]&finAcked != 0
}

// pending reports whether id is watched and not acknowledged (an unwatched
// stream's state is unknown).
func (w *finWatch) pending(id uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	v, ok := w.fin[id]
	return ok && v&finAcked == 0
}

func (w *finWatch) forget(id uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.fin, id)
}

func (s *frameScanner) takePing(now time.Time) bool {
	if s.last.IsZero() {
		s.tokens, s.last = pingBurst, now
	}
	s.tokens = min(pingBurst, s.tokens+now.Sub(s.last).Seconds()*pingRate)
	s.last = now
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// Write queues p, a part of yamux's frame stream, for the writer.
func (m *muxConn) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.queue) >= maxQueued && m.err == nil && !m.closing {
		m.wake.Wait()
	}
	if m.err != nil {
		return 0, m.err
	}
	if m.closing {
		return 0, errMuxClosed
	}
	n := len(p)
	if m.have == 0 && m.bodyLeft == len(p) && len(p) >= bigBody {
		if err := m.writeBig(p); err != nil {
			return 0, err
		}
		return n, nil
	}
	m.queue = append(m.queue, p...)
	for len(p) > 0 {
		if m.bodyLeft > 0 {
			n := min(len(p), m.bodyLeft)
			m.bodyLeft -= n
			p = p[n:]
		} else {
			k := copy(m.hdr[m.have:], p)
			m.have += k
			p = p[k:]
			if m.have < yamuxHeaderLen {
				break
			}
			m.have = 0
			if m.hdr[1] == yamuxTypeData {
				m.bodyLeft = int(binary.BigEndian.Uint32(m.hdr[8:]))
			}
			if binary.BigEndian.Uint16(m.hdr[2:])&yamuxFlagSYN != 0 {
				// A stream this side opens is watched from its SYN, before
				// the peer's ACK can come back.
				m.fins.watch(binary.BigEndian.Uint32(m.hdr[4:]))
			}
		}
		if m.have == 0 && m.bodyLeft == 0 {
			m.boundary(len(m.queue) - len(p))
		}
	}
	return n, nil
}

// writeBig hands the writer the queue and body, the whole rest of the
// current frame's body, and waits until it has sealed them. bodyLeft stays
// set meanwhile, so that reset waits for the boundary after body. Callers
// hold mu.
func (m *muxConn) writeBig(body []byte) error {
	m.big, m.ready = body, len(m.queue)
	m.wake.Broadcast()
	for m.big != nil && m.err == nil {
		m.wake.Wait()
	}
	if m.err != nil {
		return m.err // the writer has returned, perhaps before taking body
	}
	m.bodyLeft = 0
	m.boundary(len(m.queue))
	return nil
}

// boundary marks queue[:end] as whole frames, adds the resets waiting for
// a boundary, and wakes the writer. Callers hold mu.
func (m *muxConn) boundary(end int) {
	if len(m.resets) > 0 && end == len(m.queue) {
		for _, id := range m.resets {
			m.queue = appendReset(m.queue, id)
		}
		m.resets = m.resets[:0]
		end = len(m.queue)
	}
	m.ready = end
	m.wake.Broadcast()
}

// writer hands whole queued frames to the record layer until Close.
func (m *muxConn) writer() {
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

// reset aborts stream id towards the peer with a yamux RST (the peer's
// stream then fails with yamux.ErrConnectionReset). yamux v0.1.2 has no
// call for it, but its frames pass here: the RST goes out between two of
// them. The peer then never sends the stream's FIN, so the local yamux gets
// a RST too (see localResets): else it would keep the stream, and, before
// the peer's ACK, one of its stream-open slots, for its 5-minute close
// timeout.
//
// A stream this side opened is reset only once the peer's ACK came: before,
// the peer has not accepted it, and yamux would give back the stream's
// open slot at once while the stream still sits in the peer's accept
// backlog, so that the backlog could overflow (the peer then resets new
// streams). Such a stream ends with the caller's FIN instead.
func (m *muxConn) reset(id uint32) {
	if !m.fins.isAcked(id) {
		return
	}
	m.local.add(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil || m.closing {
		return
	}
	m.resets = append(m.resets, id)
	if m.have == 0 && m.bodyLeft == 0 {
		m.boundary(len(m.queue))
	}
}

// appendReset appends a window update frame with the RST flag for id.
func appendReset(b []byte, id uint32) []byte {
	var h [yamuxHeaderLen]byte
	h[1] = yamuxTypeWindowUpdate
	binary.BigEndian.PutUint16(h[2:], yamuxFlagRST)
	binary.BigEndian.PutUint32(h[4:], id)
	return append(b, h[:]...)
}

// Close lets the writer send what is queued, for up to flushTimeout, then
// closes the record layer (sending CLOSE) and waits for the writer.
func (m *muxConn) Close() error {
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
// the peer's next frame (a keepalive comes every --keepalive). Safe for
// concurrent use; read is called by yamux's single read goroutine.
type localResets struct {
	mu      sync.Mutex
	pending []uint32
	frame   [yamuxHeaderLen]byte
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
		l.frame = [yamuxHeaderLen]byte{1: yamuxTypeWindowUpdate}
		binary.BigEndian.PutUint16(l.frame[2:], yamuxFlagRST)
		binary.BigEndian.PutUint32(l.frame[4:], id)
		l.left = l.frame[:]
	}
	n := copy(p, l.left)
	l.left = l.left[n:]
	return n
}

// flushTimeout bounds how long Close waits for queued frames to go out to
// a peer that does not read.
const flushTimeout = 2 * time.Second

// sweepInterval is how often a session drops the receive buffers of the
// streams that moved no data since the last sweep.
const sweepInterval = time.Second

// supervise runs for the life of sess, the session over m: it sweeps idle
// streams' receive buffers, and when the session closes it ends the streams
// still carried whose FIN had not arrived (see carried.closeAll).
func (m *muxConn) supervise(sess *yamux.Session) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-sess.CloseChan():
			m.live.closeAll()
			return
		case <-t.C:
			m.live.sweep()
		}
	}
}

// carried is the set of streams being forwarded on one session. Safe for
// concurrent use.
type carried struct {
	mu     sync.Mutex
	closed bool
	m      map[*yamux.Stream]*carriedStream
}

// carriedStream is one forwarded stream's entry.
type carriedStream struct {
	closed func()      // called once if the session closes while it is carried
	active atomic.Bool // data arrived since the last sweep
}

// add registers st; closed is called (from another goroutine) if the
// session closes before remove, at once if it has closed already.
func (c *carried) add(st *yamux.Stream, closed func()) *carriedStream {
	cs := &carriedStream{closed: closed}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		closed()
		return cs
	}
	if c.m == nil {
		c.m = make(map[*yamux.Stream]*carriedStream)
	}
	c.m[st] = cs
	c.mu.Unlock()
	return cs
}

func (c *carried) remove(st *yamux.Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, st)
}

// sweep drops the receive buffer of every stream that received nothing
// since the last sweep. yamux keeps a stream's buffer at the size of the
// largest burst it held (up to a window), and dropping it after every read
// would make the next burst allocate it again; a quiet stream needs none.
func (c *carried) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for st, cs := range c.m {
		if !cs.active.Swap(false) {
			st.Shrink() // a no-op unless the buffer is empty
		}
	}
}

// closeAll tells every carried stream that the session has closed.
func (c *carried) closeAll() {
	c.mu.Lock()
	c.closed = true
	var fns []func()
	for _, cs := range c.m {
		fns = append(fns, cs.closed)
	}
	c.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// muxSettings are the yamux knobs an agent exposes.
type muxSettings struct {
	keepAlive time.Duration
	window    uint32
}

func (s muxSettings) config(log zerolog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = s.keepAlive
	c.MaxStreamWindowSize = s.window
	c.ConnectionWriteTimeout = 10 * time.Second
	c.StreamOpenTimeout = 10 * time.Second
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	return c
}

// yamuxLogger sends yamux's own messages to the debug log.
type yamuxLogger struct{ log zerolog.Logger }

func (l yamuxLogger) Print(v ...any)                 { l.log.Debug().Msg(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l yamuxLogger) Println(v ...any)               { l.log.Debug().Msg(fmt.Sprint(v...)) }
