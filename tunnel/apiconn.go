package tunnel

// The Go API (apientry.go, apiexit.go) hands a program one stream as a *Conn: the entry's
// DialContext returns one whose exit answered status 0, an exit's Listener
// accepts one after the exit has answered status 0 for it. A Conn behaves
// as a TCP connection does:
//
//	Read:       the peer's bytes; io.EOF only after the peer's FIN. A reset
//	            stream fails with ECONNRESET, a stream whose session died
//	            before the peer's FIN with relay.ErrSessionLost.
//	Write:      into the stream; ECONNRESET once the peer reset it.
//	CloseWrite: FIN; the peer reads EOF, this side may go on reading.
//	Close:      blocked calls return net.ErrClosed, and the peer reads EOF
//	            after what was written. As TCP answers with RST, the stream
//	            is reset instead if the peer's data is left unread, or comes
//	            after Close; once the peer's FIN has come, the stream is done.
//
// After Close one goroutine waits for the peer's FIN (a zero-length Read,
// holding no buffer), at most yamux's StreamCloseTimeout; the agent learns
// that the stream is over from done.

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Conn is one stream through the tunnel, a net.Conn. Entry.DialContext
// returns one, and so does the Accept of an exit's Listener. LocalAddr and
// RemoteAddr are the addresses of the session's TCP connection between
// entry and exit. Its methods are safe for concurrent use, as net.Conn's
// are.
type Conn struct {
	st          *session.Stream
	service     serviceName
	fingerprint string
	origin      string
	moved       ledger.Tally // this agent's service counters: Write adds FromConn, Read ToConn

	rmu     sync.Mutex // held by Read, and by the wait for the peer's FIN after Close
	dmu     sync.Mutex // orders Close and the deadline setters: a deadline set before Close cannot undo Close's
	once    sync.Once
	closed  atomic.Bool   // set under dmu
	aborted atomic.Bool   // reset either way, or cut with its session
	read    atomic.Int64  // bytes Read returned
	written atomic.Int64  // bytes Write took
	done    chan struct{} // closed when the stream is over, after Close
	onDone  func(*Conn)   // the agent's accounting, called once when done closes (may be nil)
}

// newConn makes a Conn of st, whose header and status have been
// exchanged. onDone, if not nil, runs once the stream is over after Close.
func newConn(st *session.Stream, service serviceName, fingerprint, origin string, moved ledger.Tally, onDone func(*Conn)) *Conn {
	return &Conn{
		st: st, service: service, fingerprint: fingerprint, origin: origin,
		moved: moved, done: make(chan struct{}), onDone: onDone,
	}
}

// Service returns the name of the exit's service the stream goes to, as on
// the wire: "" for the default service.
func (c *Conn) Service() string { return c.service.wire() }

// PeerFingerprint returns the fingerprint (SHA256:...) of the other agent's
// key, which the handshake authenticated: on the entry the exit's key, on
// the exit the entry's.
func (c *Conn) PeerFingerprint() string { return c.fingerprint }

// Origin returns the application's address ("ip:port") as the entry
// reported it in the stream header, or "" if it reported none (a stream
// from DialContext has none). The exit cannot check it.
func (c *Conn) Origin() string { return c.origin }

// Read reads the peer's bytes.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.closed.Load() {
		return 0, c.opError("read", net.ErrClosed)
	}
	n, err := c.st.Read(p)
	if n > 0 {
		c.st.Touch()
		c.moved.ToConn.Add(int64(n))
		c.read.Add(int64(n))
	}
	if err != nil {
		err = c.streamError("read", err)
	}
	return n, err
}

// Write writes p to the stream.
func (c *Conn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.opError("write", net.ErrClosed)
	}
	n, err := c.st.Write(p)
	c.moved.FromConn.Add(int64(n))
	c.written.Add(int64(n))
	if err != nil {
		err = c.streamError("write", err)
	}
	return n, err
}

// CloseWrite closes the sending direction (a FIN): the peer reads io.EOF
// after what was written, and this side may go on reading.
func (c *Conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opError("close", net.ErrClosed)
	}
	return c.st.CloseWrite()
}

// Close closes the connection; blocked Read and Write calls return
// net.ErrClosed. What was written is delivered before the peer's EOF.
// Unread data, or data that arrives after Close, resets the stream, as
// TCP does.
func (c *Conn) Close() error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.closed.Load() {
		return c.opError("close", net.ErrClosed)
	}
	c.closed.Store(true)
	c.st.SetDeadline(time.Now()) // wakes a blocked Read, which then releases rmu, and a blocked Write
	go c.finish()
	return nil
}

// finish ends the stream after Close: a reset if data is left unread,
// else the FIN; then it waits for the peer's end, resetting the stream if
// data comes first, and releases the stream.
func (c *Conn) finish() {
	c.rmu.Lock()
	// Close's deadline has passed: this Read only looks for unread data.
	_, err := c.st.Read(nil)
	switch {
	case errors.Is(err, session.ErrTimeout): // nothing unread: FIN, and wait
		c.st.CloseWrite()
		c.st.SetReadDeadline(time.Time{})
		_, err = c.st.Read(nil) // returns when data comes, or at the stream's end
	case err == io.EOF: // the peer is done too
		c.st.CloseWrite()
	}
	c.rmu.Unlock()
	switch {
	case err == nil: // data unread, or sent after Close: reset, as TCP does
		c.aborted.Store(true)
		c.st.Reset()
	case err != io.EOF, !c.st.PeerFinished():
		// A reset, a lost session, or yamux's StreamCloseTimeout (it
		// resets the stream).
		c.aborted.Store(true)
	}
	c.release()
}

// release ends c's stream and tells the agent.
func (c *Conn) release() {
	c.once.Do(func() {
		c.st.Close()
		close(c.done)
		if c.onDone != nil {
			c.onDone(c)
		}
	})
}

// streamError turns an error of the yamux stream into one a caller of a
// net.Conn expects.
func (c *Conn) streamError(op string, err error) error {
	switch {
	case err == io.EOF:
		if c.st.Lost() {
			c.aborted.Store(true)
			return c.opError(op, relay.ErrSessionLost)
		}
		return io.EOF
	case c.closed.Load():
		return c.opError(op, net.ErrClosed)
	case errors.Is(err, session.ErrTimeout):
		return c.opError(op, os.ErrDeadlineExceeded)
	case errors.Is(err, session.ErrReset):
		c.aborted.Store(true)
		return c.opError(op, syscall.ECONNRESET)
	case errors.Is(err, session.ErrWriteClosed): // after CloseWrite
		return c.opError(op, syscall.EPIPE)
	case errors.Is(err, session.ErrShutdown):
		c.aborted.Store(true)
		return c.opError(op, relay.ErrSessionLost)
	}
	return c.opError(op, err)
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tunnel", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// LocalAddr returns this agent's address of the session's TCP connection.
func (c *Conn) LocalAddr() net.Addr { return c.st.LocalAddr() }

// RemoteAddr returns the other agent's address of the session's TCP
// connection. On the exit, Origin is the application's address.
func (c *Conn) RemoteAddr() net.Addr { return c.st.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn's does.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.setDeadline(t, c.st.SetDeadline)
}

// SetReadDeadline sets the read deadline, as net.Conn's does.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(t, c.st.SetReadDeadline)
}

// SetWriteDeadline sets the write deadline, as net.Conn's does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(t, c.st.SetWriteDeadline)
}

func (c *Conn) setDeadline(t time.Time, set func(time.Time) error) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.closed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	return set(t)
}
