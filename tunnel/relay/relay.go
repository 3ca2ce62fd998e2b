// Package relay carries one connection through one stream: a TCP or UNIX
// connection (the application's at the entry, the backend's at the exit)
// and a session.Stream, one goroutine per direction, until both directions
// have ended; it reports how the pair ended (Result).
//
//	conn -> stream: wait until conn is readable, holding no buffer (rawReader);
//	                borrow a pooled buffer, read what is there, write it to the
//	                stream (one frame, sealed as one batch of records), give the
//	                buffer back. Runs in a goroutine of its own (Start).
//	stream -> conn: a zero-length Read waits for data without a buffer; then
//	                the same borrow, read, write, give back. Runs in the
//	                caller's goroutine (Run).
//
// So a connection that waits holds no copy buffer and two goroutines, and
// the stream's receive buffer is dropped once it has gone quiet. Ends
// travel end to end: EOF becomes the stream's FIN and the stream's FIN
// becomes conn's CloseWrite; a reset of conn becomes a reset of the stream
// and a reset stream, or a session lost before the peer's FIN, becomes a
// reset of conn. How a pair ends is one of the End values below, decided
// in this file only.
package relay

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/rawio"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Reset closes c abortively: a TCP connection with a RST (linger 0), so
// that its peer sees an abort and not an end; any other, which may have no
// such thing, just closed.
func Reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// End is how a relayed pair ended; each names what happened to conn and
// to the stream.
//
//	Clean        both directions ended with a FIN: conn's EOF became the
//	             stream's FIN and the peer's FIN conn's CloseWrite; both
//	             are closed.
//	Failed       this side failed first: conn was reset or failed, a write
//	             stalled (a reader that stopped reading), or the caller's
//	             step before copying failed (Fail). conn is reset, and the
//	             peer's stream too once the peer had accepted it.
//	PeerReset    the peer reset the stream: conn is reset.
//	Lost         the session ended before the peer's FIN: the stream's end
//	             is unknown; conn is reset.
//	NotAccepted  (with Options.Unacked) the peer reset the stream before
//	             acknowledging it, so nothing on its side saw it: conn is
//	             left open and unread, and Unacked holds what was sent.
type End int

const (
	Clean End = iota
	Failed
	PeerReset
	Lost
	NotAccepted
)

// Result is what Run reports once both directions have ended.
type Result struct {
	End        End
	ToStream   int64 // bytes conn sent into the stream
	FromStream int64 // bytes the stream delivered to conn
	Err        error // the first error that ended a direction early, if any
}

// Aborted reports whether the tunnel side cut the pair: the peer reset the
// stream, or the session was lost.
func (r Result) Aborted() bool { return r.End == PeerReset || r.End == Lost }

// ErrSessionLost: the session ended before the peer's FIN.
var ErrSessionLost = errors.New("tunnel session lost")

// DefaultWriteStall is how long one write may block on a peer that does
// not read before the connection is aborted.
const DefaultWriteStall = 2 * time.Minute

// Options are what a relay needs besides its pair.
type Options struct {
	Pool  *Pool
	Stall time.Duration // a write blocked longer aborts the pair (a reader that stopped reading)
	// FromConn and ToConn, if not nil, get each chunk's bytes as they move:
	// what conn sends into the stream, and what the stream delivers to conn.
	FromConn, ToConn *atomic.Int64
	// Unacked, if not nil (the entry), keeps what is sent before the peer
	// acknowledges the stream, and makes a refusal before then NotAccepted.
	Unacked *Unacked
}

// Relay is one pair being relayed. Start it, then call Run (or Go), or
// Fail if the caller's own step before copying to conn failed.
type Relay struct {
	conn net.Conn
	raw  *rawio.Conn // conn with raw I/O, if it is a non-blocking socket; else nil
	st   *session.Stream
	o    Options

	fromDone chan struct{} // closed when the conn -> stream direction has ended
	toWD     writeDeadline // conn's write deadline, when it has no raw I/O (writeConn)
	toStream int64         // set by the conn -> stream direction before fromDone

	mu      sync.Mutex
	first   error
	once    sync.Once   // abort and notAccepted race for it
	failed  atomic.Bool // this side ended the pair abnormally
	reset   atomic.Bool // the peer reset the stream
	lost    atomic.Bool // the session ended before the peer's FIN
	upDone  atomic.Bool // the conn -> stream direction has ended
	stopped atomic.Bool // abort has begun: st's read deadline is ours no more
	refused atomic.Bool // the stream was never accepted: conn goes back to the caller
}

// Start begins copying conn to st in a new goroutine. The stream's
// session ending before the peer's FIN aborts the pair.
//
// conn is best a *net.TCPConn or a *net.UnixConn (a rawio.Socket) on a
// non-blocking descriptor, as package net makes them: then it
// is read and written with raw system calls, and waits without a buffer.
// Any other net.Conn is read and written through its own methods, holding
// a buffer while it waits for data; without a CloseWrite method, the
// peer's FIN cannot be passed on, and conn stays open for writing until
// the pair ends.
func Start(conn net.Conn, st *session.Stream, o Options) *Relay {
	r := &Relay{conn: conn, st: st, o: o, fromDone: make(chan struct{})}
	if s, ok := conn.(rawio.Socket); ok {
		r.raw, _ = rawio.NewConn(s) // nil for a blocking descriptor: plain I/O
	}
	st.OnLost(r.sessionLost)
	go r.fromConn()
	return r
}

// Run copies st to conn until both directions have ended, closes both
// (or, NotAccepted, closes st and hands conn back open) and reports.
func (r *Relay) Run() Result {
	var res Result
	r.toConn(func(r Result) { res = r })
	return res
}

// toConn is the stream -> conn direction, to the end of the pair, whose
// result it passes to done. A goroutine of Go starts here: its frames while
// it waits are this one's, copyToConn's and the stream's Read, so that its
// stack stays at the runtime's smallest.
func (r *Relay) toConn(done func(Result)) {
	r.o.Unacked.release() // the caller saw the peer accept the stream, or keeps nothing
	n, readErr, writeErr := r.copyToConn()
	r.toConnEnded(readErr, writeErr)
	done(r.finish(n))
}

// Go is Run in a goroutine of its own, which then calls done with the
// result; the caller's goroutine is free at once. An agent relays so: a
// connection that waits then holds two goroutines parked a few frames
// deep, whose stacks stay small, and none of the caller's, whose stack may
// have grown while it set the stream up (a dial, a handshake of headers).
func (r *Relay) Go(done func(Result)) { go r.toConn(done) }

// Fail ends the pair because the caller's step before copying to conn
// failed with err (the entry: the exit's status did not come, or refused
// the stream), and reports as Run does.
func (r *Relay) Fail(err error) Result {
	if !r.notAccepted(err) {
		r.fail(err)
		r.abort(false)
	}
	return r.finish(0)
}

func (r *Relay) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first == nil {
		r.first = err
	}
}

// abort ends both directions now: conn is reset and st stops reading.
// With tellPeer the peer's stream is reset too.
func (r *Relay) abort(tellPeer bool) {
	r.failed.Store(true)
	r.once.Do(func() {
		if tellPeer {
			r.st.Reset()
		}
		Reset(r.conn)
		r.stopped.Store(true) // before the deadline: see copyToConn
		r.st.SetReadDeadline(time.Now())
	})
}

// notAccepted reports, after err, whether the stream was reset without
// the peer's ACK; then it stops conn's reader without touching conn.
func (r *Relay) notAccepted(err error) bool {
	if r.o.Unacked == nil || !errors.Is(err, session.ErrReset) || !r.st.Pending() {
		return false
	}
	r.once.Do(func() {
		r.refused.Store(true)
		r.stopped.Store(true)
		r.conn.SetReadDeadline(time.Now())
	})
	return r.refused.Load()
}

// peerReset: the peer reset the stream (err).
func (r *Relay) peerReset(err error) {
	r.reset.Store(true)
	r.fail(err)
	r.abort(false)
}

// sessionLost: the session ended before the peer's FIN.
func (r *Relay) sessionLost() {
	r.lost.Store(true)
	r.fail(ErrSessionLost)
	r.abort(false)
}

// fromConn is the conn -> stream direction.
func (r *Relay) fromConn() {
	n, readErr, writeErr := r.copyFromConn()
	r.fromConnEnded(n, readErr, writeErr)
}

// fromConnEnded decides what the end of the conn -> stream direction,
// after n bytes, means. (Apart from fromConn, so that the frame of a
// direction that waits stays small.)
func (r *Relay) fromConnEnded(n int64, readErr, writeErr error) {
	defer close(r.fromDone)
	r.toStream = n
	switch {
	case r.refused.Load() || r.notAccepted(writeErr):
	case readErr == nil && writeErr == nil: // EOF
	case readErr != nil && isClosed(readErr): // the other direction aborted
	case readErr != nil: // the application or the backend reset or failed
		r.fail(readErr)
		r.abort(true)
	case errors.Is(writeErr, session.ErrReset):
		r.peerReset(writeErr)
	case r.st.Lost():
		r.sessionLost()
	default: // stalled: the peer stopped reading
		r.fail(writeErr)
		r.abort(true)
	}
	r.st.CloseWrite() // FIN: this direction is done
	r.upDone.Store(true)
}

// toConnEnded decides what the end of the stream -> conn direction means.
func (r *Relay) toConnEnded(readErr, writeErr error) {
	switch {
	case readErr == nil && writeErr == nil: // the peer's FIN, or a session that died
		switch {
		case r.st.Lost():
			r.sessionLost()
		case !r.upDone.Load():
			closeWrite(r.conn)
		} // else both directions are done: finish closes conn
	case writeErr != nil: // the application or the backend is gone, or stalled
		if !isClosed(writeErr) {
			r.fail(writeErr)
		}
		r.abort(true)
	case errors.Is(readErr, session.ErrReset):
		r.peerReset(readErr)
	case r.st.Lost():
		r.sessionLost()
	default: // our own read deadline: the other direction aborted
		r.fail(readErr)
		r.abort(false)
	}
}

// finish waits for the conn -> stream direction, closes st and conn (for a
// stream never accepted, hands conn back open), and reports.
func (r *Relay) finish(fromStream int64) Result {
	<-r.fromDone
	r.st.Close()
	if r.refused.Load() {
		r.conn.SetReadDeadline(time.Time{})
		return Result{End: NotAccepted}
	}
	r.conn.Close()
	res := Result{End: Clean, ToStream: r.toStream, FromStream: fromStream}
	r.mu.Lock()
	res.Err = r.first
	r.mu.Unlock()
	switch {
	case r.lost.Load():
		res.End = Lost
	case r.reset.Load():
		res.End = PeerReset
	case r.failed.Load() || res.Err != nil:
		res.End = Failed
	}
	return res
}

// closeWrite half-closes c, if it can.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// isClosed reports errors that mean "we closed it ourselves".
func isClosed(err error) bool { return session.IsClosedErr(err) }
