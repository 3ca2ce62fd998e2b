package tunnel

// Forwarding: one carried connection is a TCP or UNIX stream connection
// (the application's at the entry, the backend's at the exit) and a yamux
// stream, with one goroutine per direction.
//
//	conn -> stream: wait until conn is readable, holding no buffer (rawReader);
//	                borrow a pooled buffer, read what is there, write it to the
//	                stream (one yamux frame, sealed by muxConn as one batch of
//	                records), give the buffer back.
//	stream -> conn: a zero-length Read waits for data without a buffer; then
//	                the same borrow, read, write, give back.
//
// So a connection that waits holds no copy buffer, and yamux's receive
// buffer of a stream that has gone quiet is dropped by its session's sweep
// (carried). The two goroutines are started fresh, so that they park a few
// frames deep. Ends travel end to end: EOF becomes the stream's FIN and the
// stream's FIN becomes conn's CloseWrite; a reset of conn becomes a reset
// of the stream (muxConn.reset) and a reset stream, or a session that died
// before the peer's FIN, becomes a reset of conn.

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/frame"
)

// carriedConn is a connection forward carries: a *net.TCPConn or a
// *net.UnixConn. Both are pointers, so holding one in this interface
// allocates nothing; a reset (resetConn) is a TCP RST for TCP and a plain
// close for UNIX, which has no such thing.
type carriedConn interface {
	net.Conn
	CloseWrite() error
	SyscallConn() (syscall.RawConn, error)
}

// resetConn closes c abortively: a TCP connection with a RST (linger 0), so
// that its peer sees an abort and not an end; a UNIX one just closed.
func resetConn(c carriedConn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// copyBufSize makes one read from a connection one yamux frame and one
// batch of records: the frame's header and body fill a batch exactly.
const copyBufSize = frame.BatchPayload - yamuxHeaderLen

// bufPool hands out copy buffers and counts those lent out. Each agent owns
// one. Reads use a buffer of copyBufSize; a short read is moved into a
// buffer of the smallest of smallSizes that holds it before it waits to be
// written, so that many connections each sending a small message at once
// do not each hold a large buffer while yamux's send loop serves them.
type bufPool struct {
	large sync.Pool
	small [len(smallSizes)]sync.Pool
	lent  atomic.Int64
}

// smallSizes are the size classes for short reads, smallest first.
var smallSizes = [...]int{4 << 10, 32 << 10}

func newBufPool() *bufPool {
	p := &bufPool{large: sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}}
	for i, size := range smallSizes {
		p.small[i].New = func() any { b := make([]byte, size); return &b }
	}
	return p
}

// get lends a buffer of copyBufSize.
func (p *bufPool) get() *[]byte {
	p.lent.Add(1)
	return p.large.Get().(*[]byte)
}

// shrink returns a buffer holding b[:n], the smaller of b and a buffer of
// a small size class, and gives b back if it was not the one returned.
func (p *bufPool) shrink(b *[]byte, n int) *[]byte {
	for i, size := range smallSizes {
		if n <= size {
			s := p.small[i].Get().(*[]byte)
			copy(*s, (*b)[:n])
			p.large.Put(b)
			return s
		}
	}
	return b
}

// put takes back a buffer that get or shrink lent.
func (p *bufPool) put(b *[]byte) {
	p.lent.Add(-1)
	for i, size := range smallSizes {
		if cap(*b) == size {
			p.small[i].Put(b)
			return
		}
	}
	p.large.Put(b)
}

// tally is where forward adds the bytes it copies, once per chunk, as they
// move: fromConn counts what conn sends into the stream, toConn what the
// stream delivers to conn. The counters are an agent's, shared by all its
// streams.
type tally struct{ fromConn, toConn *atomic.Int64 }

// flow is what forward reports when both directions are done.
type flow struct {
	toStream, fromStream int64 // bytes
	aborted              bool  // the tunnel side ended the stream abnormally: conn was reset, not closed cleanly
	err                  error // the first error that ended a direction early, if any
	// notAccepted: the peer's multiplexer reset the stream without ever
	// acknowledging it, so nothing on the peer's side saw it; conn is left
	// open, and what was read from it is in the unacked given to forward.
	notAccepted bool
}

// maxUnacked bounds what unacked keeps. yamux lets a stream send one
// initial window (256 KiB) before the peer's first window update, which
// carries its ACK, so it is never reached unless the peer misbehaves.
const maxUnacked = 1 << 20

// unacked keeps what an entry sends into a stream until the exit accepts
// it (its yamux ACK). An exit that is going away refuses streams whose SYN
// crossed its GoAway with a RST and no ACK, before anything in it sees the
// stream, so its application bytes can be sent again on another session.
// What it keeps goes once the stream is acknowledged, at the next chunk
// sent or when the exit's status arrives (release), so that a connection
// that goes quiet keeps nothing. Safe for concurrent use; forward's caller
// reads buf after forward has returned.
type unacked struct {
	mu   sync.Mutex
	buf  []byte
	done atomic.Bool // the stream was acknowledged, or too much was sent: keep nothing
}

// keep records p, about to be written to the stream id of mc, while the
// peer has not acknowledged the stream.
func (u *unacked) keep(mc *muxConn, id uint32, p []byte) {
	if u == nil || u.done.Load() {
		return
	}
	if !mc.fins.pending(id) {
		u.release()
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.done.Load():
	case len(u.buf)+len(p) > maxUnacked:
		u.done.Store(true)
		u.buf = nil
	default:
		u.buf = append(u.buf, p...)
	}
}

// release drops what u keeps, and keeps nothing more: the stream was
// accepted.
func (u *unacked) release() {
	if u == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.done.Store(true)
	u.buf = nil
}

// forward carries conn and st both ways, one goroutine per direction, and
// returns at once. When both directions have ended it closes both and
// calls done with the flow, on one of its goroutines. st is a stream of
// the session under mc. before, if not nil, runs in the stream-to-conn
// direction before copying (the entry reads the exit's status there); an
// error from it aborts both directions. With u (the entry), a stream that
// the peer resets before acknowledging it ends with flow.notAccepted
// instead, with conn open and not read from. The bytes also go to moved as
// they are copied. A write that stalls for longer than stall (a reader
// that stopped reading) aborts the connection, so nothing waits, or
// buffers, without bound; a direction left half-open is bounded by yamux's
// StreamCloseTimeout.
//
// The caller's goroutine is free once forward returns: a connection that
// waits holds two goroutines parked a few frames deep, whose stacks the
// runtime keeps small, and none under the caller's setup.
func forward(conn carriedConn, st *yamux.Stream, mc *muxConn, pool *bufPool, stall time.Duration, moved tally, before func() error, u *unacked, done func(flow)) {
	fw := &forwarding{conn: conn, st: st, id: st.StreamID(), mc: mc, pool: pool, stall: stall, moved: moved, u: u, done: done}
	fw.left.Store(2)
	fw.cs = mc.live.add(st, func() {
		if !mc.fins.seen(fw.id) {
			fw.lost()
		}
	})
	go fw.fromConn()
	go fw.toConn(before)
}

// forwarding is the state of one forward call, shared by its two
// directions.
type forwarding struct {
	conn  carriedConn
	st    *yamux.Stream
	id    uint32
	mc    *muxConn
	pool  *bufPool
	stall time.Duration
	moved tally
	u     *unacked
	cs    *carriedStream
	done  func(flow)

	f       flow         // the byte counts; err and aborted are filled in at the end
	left    atomic.Int32 // directions still running; the last one finishes
	upDone  atomic.Bool  // the conn -> stream direction has ended
	aborted atomic.Bool
	mu      sync.Mutex
	first   error
	once    sync.Once
	stopped atomic.Bool // abort has begun: st's read deadline is ours no more
	refused atomic.Bool // the stream was never accepted: conn goes to another
}

func (fw *forwarding) fail(err error) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.first == nil {
		fw.first = err
	}
}

// abort ends both directions now: conn is reset and st stops reading.
// With tellPeer the peer's stream is reset too.
func (fw *forwarding) abort(tellPeer bool) {
	fw.once.Do(func() {
		if tellPeer {
			fw.mc.reset(fw.id)
		}
		resetConn(fw.conn)
		fw.stopped.Store(true) // before the deadline: see copyToConn
		fw.st.SetReadDeadline(time.Now())
	})
}

// notAccepted reports, after err, whether the stream was reset without
// the peer's ACK; then it stops conn's reader without touching conn.
func (fw *forwarding) notAccepted(err error) bool {
	if fw.u == nil || !errors.Is(err, yamux.ErrConnectionReset) || !fw.mc.fins.pending(fw.id) {
		return false
	}
	fw.once.Do(func() {
		fw.refused.Store(true)
		fw.stopped.Store(true)
		fw.conn.SetReadDeadline(time.Now())
	})
	return fw.refused.Load()
}

// peerReset: the peer reset the stream (err).
func (fw *forwarding) peerReset(err error) {
	fw.aborted.Store(true)
	fw.fail(err)
	fw.abort(false)
}

// lost: the session died before the peer's FIN. Its end is unknown.
func (fw *forwarding) lost() {
	fw.aborted.Store(true)
	fw.fail(errSessionLost)
	fw.abort(false)
}

// fromConn is the conn -> stream direction.
func (fw *forwarding) fromConn() {
	n, readErr, writeErr := copyFromConn(fw.st, fw.conn, fw.pool, fw.stall, fw.moved.fromConn, fw.u, fw.mc)
	fw.f.toStream = n
	switch {
	case fw.refused.Load() || fw.notAccepted(writeErr):
	case readErr == nil && writeErr == nil: // EOF
	case readErr != nil && isClosed(readErr): // the other direction aborted
	case readErr != nil: // the application or the backend reset or failed
		fw.fail(readErr)
		fw.abort(true)
	case errors.Is(writeErr, yamux.ErrConnectionReset):
		fw.peerReset(writeErr)
	case fw.st.Session().IsClosed():
		fw.lost()
	default: // stalled: the peer stopped reading
		fw.fail(writeErr)
		fw.abort(true)
	}
	fw.st.Close() // FIN: this direction is done (yamux Close is a half-close)
	fw.upDone.Store(true)
	fw.end()
}

// toConn is the stream -> conn direction, after before.
func (fw *forwarding) toConn(before func() error) {
	defer fw.end()
	if before != nil {
		if err := before(); err != nil {
			if !fw.notAccepted(err) {
				fw.fail(err)
				fw.abort(false)
			}
			return
		}
		fw.u.release() // the status came: the peer accepted the stream
	}
	n, readErr, writeErr := copyToConn(fw.conn, fw.st, fw.pool, fw.stall, fw.moved.toConn, fw.cs, &fw.stopped)
	fw.f.fromStream = n
	switch {
	case readErr == nil && writeErr == nil: // the peer's FIN, or a session that died
		switch {
		case fw.st.Session().IsClosed() && !fw.mc.fins.seen(fw.id):
			fw.lost()
		case !fw.upDone.Load():
			fw.conn.CloseWrite()
		} // else both directions are done: end closes conn
	case writeErr != nil: // the application or the backend is gone, or stalled
		if !isClosed(writeErr) {
			fw.fail(writeErr)
		}
		fw.abort(true)
	case errors.Is(readErr, yamux.ErrConnectionReset):
		fw.peerReset(readErr)
	case fw.st.Session().IsClosed() && !fw.mc.fins.seen(fw.id):
		fw.lost()
	default: // our own read deadline: the other direction aborted
		fw.fail(readErr)
		fw.abort(false)
	}
}

// end is each direction's last step; the second closes st and conn (or,
// for a stream never accepted, hands conn back open) and reports.
func (fw *forwarding) end() {
	if fw.left.Add(-1) > 0 {
		return
	}
	fw.st.Close()
	f := fw.f
	if fw.refused.Load() {
		fw.conn.SetReadDeadline(time.Time{})
		f = flow{notAccepted: true}
	} else {
		fw.conn.Close()
		fw.mu.Lock()
		f.err = fw.first
		fw.mu.Unlock()
		f.aborted = fw.aborted.Load()
	}
	fw.mc.live.remove(fw.st)
	fw.done(f)
}

var errSessionLost = errors.New("tunnel session lost")

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// defaultWriteStall is how long one write may block on a peer that does
// not read before the connection is aborted.
const defaultWriteStall = 2 * time.Minute

// copyFromConn copies conn to st until conn's EOF. It waits for conn to be
// readable without holding a buffer. Each chunk read is added to moved
// once, even if it is sent again later (from u, on another session). What
// it writes before the peer acknowledges st (on mc) goes to u too, if u is
// not nil. total is what st took; readErr is conn's failure, writeErr the
// stream's; both are nil after EOF.
func copyFromConn(st *yamux.Stream, conn carriedConn, pool *bufPool, stall time.Duration, moved *atomic.Int64, u *unacked, mc *muxConn) (total int64, readErr, writeErr error) {
	r, err := newRawReader(conn, pool)
	if err != nil {
		return 0, err, nil
	}
	var wd writeDeadline
	for {
		buf, n, err := r.read()
		if n > 0 {
			moved.Add(int64(n))
			buf = pool.shrink(buf, n) // the write may wait for yamux's send loop
			u.keep(mc, st.StreamID(), (*buf)[:n])
			wd.arm(st, stall)
			w, werr := st.Write((*buf)[:n])
			pool.put(buf)
			total += int64(w)
			if werr != nil {
				return total, nil, werr
			}
		}
		if err == io.EOF {
			return total, nil, nil
		}
		if err != nil {
			return total, err, nil
		}
	}
}

// writeDeadline bounds how long one write may block. Moving a deadline
// costs a timer update, so it is moved only once half of it is used up: a
// write that blocks is aborted after between stall/2 and stall.
type writeDeadline struct{ at time.Time }

func (d *writeDeadline) arm(w interface{ SetWriteDeadline(time.Time) error }, stall time.Duration) {
	now := time.Now()
	if d.at.Sub(now) < stall/2 {
		d.at = now.Add(stall)
		w.SetWriteDeadline(d.at)
	}
}

// Receive buffers. yamux allocates a stream's receive buffer at the size of
// the frame that finds it empty and doubles it once that frame is in, and
// keeps it. A stream that received a large burst and then pauses drops it
// after shrinkAfter of silence, so that a pooled connection that has worked
// holds no burst-sized buffer; a stream in steady bulk flow, whose next
// frame comes sooner, keeps its buffer rather than allocate it per frame.
// Buffers of small messages cost little and wait for the session's sweep.
const (
	shrinkAfter = 20 * time.Millisecond
	largeRead   = 16 << 10 // a read at least this large makes a pause drop the buffer
)

// copyToConn copies st to conn until st's EOF. A zero-length Read waits for
// data without holding a copy buffer; cs is marked active on every chunk,
// and what conn took of it is added to moved.
// stopped is set by forward's abort before it sets st's read deadline, so
// that the deadline copyToConn sets for shrinkAfter never hides an abort.
// readErr is the stream's failure, writeErr conn's; both are nil after EOF.
func copyToConn(conn carriedConn, st *yamux.Stream, pool *bufPool, stall time.Duration, moved *atomic.Int64, cs *carriedStream, stopped *atomic.Bool) (total int64, readErr, writeErr error) {
	large := false // the last read was large and drained the stream's buffer
	var wd writeDeadline
	out, err := newRawConn(conn)
	if err != nil {
		return 0, nil, err
	}
	for {
		if large {
			st.SetReadDeadline(time.Now().Add(shrinkAfter))
			_, err := st.Read(nil)
			st.SetReadDeadline(time.Time{})
			if stopped.Load() {
				return total, yamux.ErrTimeout, nil
			}
			if errors.Is(err, yamux.ErrTimeout) {
				st.Shrink()
			}
			large = false
		}
		if _, err := st.Read(nil); err != nil {
			if err == io.EOF {
				return total, nil, nil
			}
			return total, err, nil
		}
		cs.active.Store(true)
		buf := pool.get()
		n, err := st.Read(*buf)
		large = n >= largeRead && n < len(*buf)
		if n > 0 {
			wd.arm(conn, stall)
			w, werr := out.Write((*buf)[:n])
			total += int64(w)
			moved.Add(int64(w))
			if werr != nil {
				pool.put(buf)
				return total, nil, werr
			}
		}
		pool.put(buf)
		if err == io.EOF {
			return total, nil, nil
		}
		if err != nil {
			return total, err, nil
		}
	}
}

// rawReader reads a connection without holding a buffer while it
// waits: it borrows one from the pool only once the socket is readable, and
// reads in the same system call. Not safe for concurrent use.
type rawReader struct {
	rc   syscall.RawConn
	pool *bufPool
	fn   func(fd uintptr) bool // readFD, bound once so that a read allocates nothing

	buf *[]byte
	n   int
	err error
}

func newRawReader(conn carriedConn, pool *bufPool) (*rawReader, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &rawReader{rc: rc, pool: pool}
	r.fn = r.readFD
	return r, nil
}

// readFD is RawConn.Read's callback: false means "not readable yet, wait".
func (r *rawReader) readFD(fd uintptr) bool {
	b := r.pool.get()
	var n int
	var err error
	n, errno := sysRead(fd, *b)
	if errno == syscall.EAGAIN {
		r.pool.put(b)
		return false
	}
	if errno != 0 {
		err = errno
	}
	r.buf, r.n, r.err = b, n, err
	return true
}

// read returns a borrowed buffer holding n > 0 bytes, which the caller
// gives back, or io.EOF, or the failure (net.ErrClosed once conn is
// closed, ECONNRESET as an *os.SyscallError after a reset).
func (r *rawReader) read() (*[]byte, int, error) {
	r.buf, r.n, r.err = nil, 0, nil
	if err := r.rc.Read(r.fn); err != nil {
		return nil, 0, err
	}
	buf, n, err := r.buf, r.n, r.err
	r.buf = nil
	switch {
	case err != nil:
		r.pool.put(buf)
		return nil, 0, os.NewSyscallError("read", err)
	case n == 0:
		r.pool.put(buf)
		return nil, 0, io.EOF
	}
	return buf, n, nil
}

// isClosed reports errors that mean "we closed it ourselves".
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, yamux.ErrSessionShutdown)
}
