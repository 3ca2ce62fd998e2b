// Package session is the tunnel's session layer: one authenticated record
// connection (frame.Conn) between an entry and an exit, carrying a yamux
// session whose streams are the application connections (PROTOCOL.md
// section 4). It owns yamux and everything the agents need of its wire
// format: which streams the peer acknowledged and finished, resets, the
// peer's GoAway, ping limits, and dropping idle streams' buffers. No other
// package imports yamux. A session that negotiated resumption outlives its
// record connection (resume.go): a broken one is replaced by Resume.
//
//	agent: Open / Accept -> *Stream (Read, Write, CloseWrite, Reset, Close)
//	Session: yamux.Session over recordConn (records.go: write side, receive.go: read side)
//	recordConn: batches yamux's frames into records; follows both directions' frames;
//	            with resumption, outlives its link (resume.go) and keeps what the
//	            peer has not acknowledged (kept.go)
//	frame.Conn: the record layer, one per TCP connection
package session

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/frame"
)

// Settings are the multiplexer's knobs an agent exposes.
type Settings struct {
	KeepAlive time.Duration // interval of keepalive pings
	Window    uint32        // each stream's maximum receive window, bytes
	// Resume, when not zero, makes the session resumable for this long
	// after its connection breaks (resume.go). Only for a connection whose
	// handshake negotiated resumption.
	Resume time.Duration
}

// sweepInterval is how often a session drops the receive buffers of the
// streams that received no data since the last sweep.
const sweepInterval = time.Second

// Session is a yamux session over a record connection. Its methods are
// safe for concurrent use.
type Session struct {
	mux   *yamux.Session
	rc    *recordConn
	table streamTable
}

// Client starts the initiator's (the entry's) session over conn, which it
// owns from now on.
func Client(conn *frame.Conn, s Settings, log zerolog.Logger) (*Session, error) {
	return start(conn, s, log, yamux.Client)
}

// Server starts the responder's (the exit's) session over conn, which it
// owns from now on.
func Server(conn *frame.Conn, s Settings, log zerolog.Logger) (*Session, error) {
	return start(conn, s, log, yamux.Server)
}

func start(conn *frame.Conn, s Settings, log zerolog.Logger, mk func(io.ReadWriteCloser, *yamux.Config) (*yamux.Session, error)) (*Session, error) {
	sess := &Session{}
	var res *resumption
	if s.Resume > 0 {
		res = newResumption(s.Resume, s.KeepAlive, log)
	}
	sess.rc = newRecordConn(conn, &sess.table, res)
	mux, err := mk(sess.rc, s.yamuxConfig(log))
	if err != nil {
		sess.rc.Close()
		return nil, err
	}
	sess.mux = mux
	go sess.supervise()
	return sess, nil
}

func (s Settings) yamuxConfig(log zerolog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = s.KeepAlive
	c.MaxStreamWindowSize = s.Window
	c.ConnectionWriteTimeout = 10 * time.Second
	c.StreamOpenTimeout = 10 * time.Second
	if s.Resume > 0 {
		// While the connection is down yamux must wait, not time out: a
		// dead link is found below it (resume.go). Its pings go on: they
		// carry the peer's frames that localResets waits for on an idle
		// session.
		c.ConnectionWriteTimeout += s.Resume
		c.StreamOpenTimeout += s.Resume
	}
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	return c
}

// yamuxLogger sends yamux's own messages to the debug log.
type yamuxLogger struct{ log zerolog.Logger }

func (l yamuxLogger) Print(v ...any)                 { l.log.Debug().Msg(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l yamuxLogger) Println(v ...any)               { l.log.Debug().Msg(fmt.Sprint(v...)) }

// supervise runs for the life of the session: it sweeps idle streams'
// receive buffers, and when the session ends it tells the Streams still
// held (Stream.OnLost).
func (s *Session) supervise() {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.mux.CloseChan():
			for _, st := range s.table.close() {
				st.sessionEnded()
			}
			return
		case now := <-t.C:
			s.sweep()
			if s.rc.res != nil {
				s.rc.res.tick(s.rc, now)
			}
		}
	}
}

// sweep drops the receive buffer of every stream that received nothing
// since the last sweep. yamux keeps a stream's buffer at the size of the
// largest burst it held (up to a window), and dropping it after every read
// would make the next burst allocate it again; a quiet stream needs none.
func (s *Session) sweep() {
	for _, st := range s.table.held() {
		if !st.active.Swap(false) {
			st.Shrink() // a no-op unless the buffer is empty
		}
	}
}

// Open opens a stream; ErrGoneAway once the peer has sent GoAway.
func (s *Session) Open() (*Stream, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, err
	}
	return newStream(s, st), nil
}

// Accept waits for the peer's next stream; an error once the session has
// ended.
func (s *Session) Accept() (*Stream, error) {
	st, err := s.mux.AcceptStream()
	if err != nil {
		return nil, err
	}
	return newStream(s, st), nil
}

// GoAway tells the peer to open no more streams; those open go on.
func (s *Session) GoAway() error { return s.mux.GoAway() }

// PeerGoneAway is closed once the peer has sent GoAway.
func (s *Session) PeerGoneAway() <-chan struct{} { return s.rc.goAway }

// Close ends the session: its streams end, what is queued goes out for up
// to flushTimeout, and the record layer sends CLOSE. Idempotent.
func (s *Session) Close() error { return s.mux.Close() }

// Done is closed once the session has ended.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.mux.IsClosed() }

// NumStreams is how many streams are open.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Stats are the record layer's counts, over every connection the session
// has had.
func (s *Session) Stats() frame.Stats {
	s.rc.mu.Lock()
	defer s.rc.mu.Unlock()
	st := s.rc.link.Stats()
	if s.rc.res != nil {
		st = addStats(st, s.rc.res.past)
	}
	return st
}

// Resume hands a resumable session a new connection, after a handshake
// that resumed it (handshake.Resume, or a responder's resumption). The
// session's streams go on over it; the old connection, if it still looked
// alive, is dropped. It fails, closing conn, once the session has ended.
func (s *Session) Resume(conn *frame.Conn) error {
	if s.rc.res == nil {
		conn.Close()
		return errors.New("tunnel: the session is not resumable")
	}
	return s.rc.res.resume(s.rc, conn)
}

// LinkDown receives each time the connection of a resumable session
// breaks and the session waits for Resume (nil channel otherwise).
func (s *Session) LinkDown() <-chan struct{} {
	if s.rc.res == nil {
		return nil
	}
	return s.rc.res.downs
}

// Link describes the connection of a resumable session.
func (s *Session) Link() LinkState {
	if s.rc.res == nil {
		return LinkState{}
	}
	s.rc.mu.Lock()
	defer s.rc.mu.Unlock()
	return s.rc.res.linkState()
}

// LocalAddr is this side's address of the session's connection.
func (s *Session) LocalAddr() net.Addr { return s.mux.LocalAddr() }

// RemoteAddr is the peer's address of the session's connection.
func (s *Session) RemoteAddr() net.Addr { return s.mux.RemoteAddr() }

// Outcome is how a session ended, by its record layer.
type Outcome int

const (
	ClosedLocally Outcome = iota // this side closed it: drain, replacement, keepalive timeout, limit
	ClosedByPeer                 // CLOSE received
	Cut                          // the connection ended without CLOSE
	Failed                       // a record failed (authentication, decryption), or another error
	NumOutcomes
)

// Outcome classifies the session, once ended, from its record layer's
// read error.
func (s *Session) Outcome() Outcome {
	if s.rc.failure() != nil {
		return Failed
	}
	switch err := s.rc.current().ReadError(); {
	case err == nil, errors.Is(err, net.ErrClosed):
		return ClosedLocally
	case errors.Is(err, io.EOF):
		return ClosedByPeer
	case errors.Is(err, frame.ErrTruncated):
		return Cut
	}
	return Failed
}

// End describes how the session, once ended, ended: from its record
// stream, or, when that did not fail (a keepalive timeout, a ping flood, a
// local close), from yamux's own reason. clean is false for every end that
// may have cut data.
func (s *Session) End() (reason error, clean bool) {
	if err := s.rc.failure(); err != nil {
		return err, false
	}
	readErr := s.rc.current().ReadError()
	if readErr == nil || errors.Is(readErr, net.ErrClosed) {
		if _, err := s.mux.AcceptStream(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
			return err, false // e.g. yamux.ErrKeepAliveTimeout
		}
	}
	switch {
	case readErr == nil, errors.Is(readErr, net.ErrClosed):
		return errors.New("closed locally"), true
	case errors.Is(readErr, io.EOF):
		return errors.New("peer closed the session (CLOSE received)"), true
	case errors.Is(readErr, frame.ErrTruncated):
		return fmt.Errorf("connection cut without CLOSE, data may be truncated: %w", readErr), false
	}
	return readErr, false
}
