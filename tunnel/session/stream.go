package session

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Errors a Stream's calls return, so that callers need not know yamux.
var (
	// ErrReset: the peer reset the stream, or this side did (Reset).
	ErrReset = yamux.ErrConnectionReset
	// ErrTimeout: a deadline passed.
	ErrTimeout = yamux.ErrTimeout
	// ErrWriteClosed: a Write after CloseWrite.
	ErrWriteClosed = yamux.ErrStreamClosed
	// ErrShutdown: the session has ended.
	ErrShutdown = yamux.ErrSessionShutdown
	// ErrGoneAway: the peer sent GoAway, so Open opens nothing.
	ErrGoneAway = yamux.ErrRemoteGoAway
)

// Stream is one stream of a Session, opened by Open or accepted by Accept.
// Read, Write, the deadlines and CloseWrite behave as yamux's; Reset aborts
// it; Close ends it and releases everything the Session keeps for it. One
// Read and one Write may run at once; the other methods are safe for
// concurrent use.
type Stream struct {
	st     *yamux.Stream
	sess   *Session
	id     uint32
	state  *streamState
	active atomic.Bool // Touch was called since the last sweep

	mu     sync.Mutex
	onLost func() // see OnLost; nil once called or after Close
	done   bool   // Close was called
}

func newStream(s *Session, st *yamux.Stream) *Stream {
	str := &Stream{st: st, sess: s, id: st.StreamID()}
	state, live := s.table.attach(str.id, str)
	str.state = state
	if !live {
		str.done = true // the session has ended: nothing to hook
	}
	return str
}

// ID is the stream's yamux id, for logs.
func (s *Stream) ID() uint32 { return s.id }

// Read reads the peer's bytes. A zero-length Read waits for data without
// taking any; io.EOF comes after the peer's FIN, and also when the
// session ended (see Lost).
//
// Read is inlined into its caller, so that a reader that waits holds no
// frame of it; a reader calls Touch when data came (see sweep).
func (s *Stream) Read(p []byte) (int, error) { return s.st.Read(p) }

// Touch marks the stream as read from since the last sweep, which then
// keeps its receive buffer for the next burst.
func (s *Stream) Touch() { s.active.Store(true) }

// Write writes p into the stream.
func (s *Stream) Write(p []byte) (int, error) { return s.st.Write(p) }

// CloseWrite sends the stream's FIN: the peer reads EOF after what was
// written. This side may go on reading.
func (s *Stream) CloseWrite() error { return s.st.Close() }

// Reset aborts the stream both ways: the peer's side fails with ErrReset,
// and so do this side's calls. A stream this side opened that the peer has
// not acknowledged yet is not reset (see recordConn.reset): it ends with
// its FIN when closed.
func (s *Stream) Reset() { s.sess.rc.reset(s.id, s.state) }

// Close sends the FIN, if CloseWrite has not, and releases the stream's
// bookkeeping: it leaves its Session's table, and OnLost will not call.
// It keeps what the frames said of it (PeerFinished, Lost). Idempotent.
func (s *Stream) Close() error {
	err := s.st.Close()
	s.mu.Lock()
	wasDone := s.done
	s.done, s.onLost = true, nil
	s.mu.Unlock()
	if !wasDone {
		s.sess.table.remove(s.id)
	}
	return err
}

// Pending reports whether the peer has not acknowledged the stream yet: it
// may still refuse it (a RST with no ACK, as a peer going away does) before
// anything on its side saw the stream.
func (s *Stream) Pending() bool { return s.state.pending() }

// PeerFinished reports whether the peer's FIN arrived: its end was clean.
func (s *Stream) PeerFinished() bool { return s.state.is(statePeerFIN) }

// Lost reports whether the session ended before the peer's FIN: the
// stream's end is unknown, and an io.EOF from Read is no end of the peer's
// data.
func (s *Stream) Lost() bool { return s.sess.IsClosed() && !s.PeerFinished() }

// OnLost has fn called once, from another goroutine, if the session ends
// before the peer's FIN and before Close; at once if it has ended already.
// It replaces an earlier fn.
func (s *Stream) OnLost(fn func()) {
	s.mu.Lock()
	if !s.done {
		s.onLost = fn
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	if s.sess.IsClosed() && !s.PeerFinished() {
		fn()
	}
}

// sessionEnded is called once the session has ended.
func (s *Stream) sessionEnded() {
	s.mu.Lock()
	fn := s.onLost
	s.onLost, s.done = nil, true // an OnLost from now on calls at once
	s.mu.Unlock()
	if fn != nil && !s.PeerFinished() {
		fn()
	}
}

// Shrink drops the stream's receive buffer if it holds no data.
func (s *Stream) Shrink() { s.st.Shrink() }

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error { return s.st.SetDeadline(t) }

// SetReadDeadline sets the read deadline; a zero-length Read honours it.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.st.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

// LocalAddr is this agent's address of the session's TCP connection.
func (s *Stream) LocalAddr() net.Addr { return s.st.LocalAddr() }

// RemoteAddr is the peer agent's address of the session's TCP connection.
func (s *Stream) RemoteAddr() net.Addr { return s.st.RemoteAddr() }

// Session returns the session the stream belongs to.
func (s *Stream) Session() *Session { return s.sess }

// IsClosedErr reports errors that mean "this side closed it": the stream's
// or connection's own Close, or its session's.
func IsClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, ErrShutdown)
}

var _ io.ReadWriter = (*Stream)(nil)
