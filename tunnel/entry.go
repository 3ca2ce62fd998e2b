package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake"
)

// EntryConfig is what an entry agent needs: its settings, which the caller
// has validated (config.Entry.Validate; the key paths in them are not used),
// and its keys.
type EntryConfig struct {
	Settings config.Entry
	Key      *rsa.PrivateKey
	PeerKey  *rsa.PublicKey
}

// Reconnection backoff: exponential from minBackoff to maxBackoff, with
// full jitter; reset once a session has lived stableSession.
const (
	minBackoff    = 100 * time.Millisecond
	maxBackoff    = 30 * time.Second
	stableSession = 10 * time.Second
)

// Entry accepts application connections and carries each as a stream of
// one long-lived, authenticated session to the exit.
type Entry struct {
	cfg        config.Entry
	hs         handshake.Config
	log        zerolog.Logger
	pool       *bufPool
	writeStall time.Duration
	count      counters

	mu      sync.Mutex
	sess    *yamux.Session // nil while there is none
	conn    *frame.Conn    // the record layer under sess
	ready   chan struct{}  // closed when sess is set; replaced when it is lost
	lastErr error          // why the last attempt to reach the exit failed
}

// NewEntry checks cfg and returns an entry agent. It starts nothing.
func NewEntry(cfg EntryConfig, log zerolog.Logger) (*Entry, error) {
	if cfg.Key == nil || cfg.PeerKey == nil {
		return nil, errors.New("tunnel: entry needs its private key and the exit's public key")
	}
	return &Entry{
		cfg: cfg.Settings,
		hs: handshake.Config{
			PrivateKey: cfg.Key,
			PeerKey:    cfg.PeerKey,
			Timeout:    cfg.Settings.HandshakeTimeout,
		},
		log:        log.With().Str("role", "entry").Str("peer", cfg.Settings.Peer).Logger(),
		pool:       newBufPool(),
		writeStall: defaultWriteStall,
		ready:      make(chan struct{}),
	}, nil
}

// Stats returns the entry's counters, with the record counts of the
// current session.
func (e *Entry) Stats() Stats {
	st := e.count.stats("entry")
	if c := e.currentConn(); c != nil {
		rs := c.Stats()
		st.RecordsSent, st.RecordsReceived = rs.RecordsSent, rs.RecordsReceived
	}
	return st
}

// currentConn returns the record layer of the current session, or nil.
func (e *Entry) currentConn() *frame.Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.conn
}

// Healthy reports whether a session with the exit is up.
func (e *Entry) Healthy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sess != nil && !e.sess.IsClosed()
}

// Serve accepts applications on ln until ctx is done, then stops accepting,
// lets open connections finish for up to the drain timeout, closes
// everything and returns. It closes ln.
func (e *Entry) Serve(ctx context.Context, ln net.Listener) error {
	hard, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	if e.cfg.StatusAddr != "" {
		wait, err := startStatus(hard, e.cfg.StatusAddr, e.log, e.Stats, e.Healthy)
		if err != nil {
			ln.Close()
			return fmt.Errorf("tunnel: status endpoint: %w", err)
		}
		defer wait()
		defer stopAll()
	}
	var wg, conns sync.WaitGroup

	wg.Add(1)
	go func() {
		defer wg.Done()
		e.maintain(ctx, hard)
	}()

	stopAccept := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopAccept()
	var acceptErr error
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !isClosed(err) {
				acceptErr = fmt.Errorf("tunnel: accept: %w", err)
			}
			break
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			e.serveApp(hard, c.(*net.TCPConn))
		}()
	}

	drained := make(chan struct{})
	go func() { conns.Wait(); close(drained) }()
	if acceptErr == nil {
		e.log.Info().Dur("drain_timeout", e.cfg.DrainTimeout).Msg("shutting down: draining open connections")
		select {
		case <-drained:
		case <-time.After(e.cfg.DrainTimeout):
			e.log.Warn().Msg("drain timeout: closing the connections still open")
		}
	}
	stopAll()
	<-drained
	wg.Wait()
	return acceptErr
}

// maintain keeps one session to the exit up while ctx lives, reconnecting
// with backoff. The session itself lives until hard ends, so that draining
// connections keep it.
func (e *Entry) maintain(ctx, hard context.Context) {
	backoff := minBackoff
	for ctx.Err() == nil {
		sess, conn, err := e.connect(ctx)
		if err != nil {
			e.count.hsFailures.Add(1)
			e.setFailure(err)
			wait := rand.N(backoff) + backoff/2
			e.log.Error().Err(err).Dur("retry_in", wait).Msg("cannot establish a session with the exit")
			backoff = min(2*backoff, maxBackoff)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
			continue
		}
		start := time.Now()
		e.setSession(sess, conn)
		e.count.sessions.Add(1)
		select {
		case <-sess.CloseChan():
		case <-ctx.Done():
			e.clearSession(sess, errors.New("entry is shutting down"))
			select {
			case <-sess.CloseChan():
			case <-hard.Done():
				sess.Close()
			}
		}
		e.count.sessions.Add(-1)
		reason := sessionEnd(sess, conn)
		e.clearSession(sess, fmt.Errorf("session lost: %v", reason))
		if ctx.Err() == nil {
			e.log.Warn().Err(reason).Dur("duration", time.Since(start)).Msg("session with the exit lost; reconnecting")
		}
		if time.Since(start) > stableSession {
			backoff = minBackoff
		}
	}
}

// connect dials the exit, runs the handshake and starts the multiplexer.
func (e *Entry) connect(ctx context.Context) (*yamux.Session, *frame.Conn, error) {
	d := net.Dialer{Timeout: e.cfg.DialTimeout, KeepAlive: e.cfg.KeepAlive}
	c, err := d.DialContext(ctx, "tcp", e.cfg.Peer)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	res, err := handshake.Initiate(ctx, c, &e.hs)
	if err != nil {
		return nil, nil, err
	}
	sess, err := yamux.Client(&muxConn{Conn: res.Conn}, muxSettings{e.cfg.KeepAlive, e.cfg.Window}.config(e.log))
	if err != nil {
		res.Conn.Close()
		return nil, nil, err
	}
	e.log.Info().Str("peer_fingerprint", res.PeerFingerprint).Dur("handshake", res.Duration).Msg("session established")
	return sess, res.Conn, nil
}

func (e *Entry) setSession(s *yamux.Session, c *frame.Conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sess, e.conn, e.lastErr = s, c, nil
	close(e.ready)
}

// clearSession forgets s, if it is still the current session.
func (e *Entry) clearSession(s *yamux.Session, why error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sess == s {
		e.sess, e.conn, e.lastErr = nil, nil, why
		e.ready = make(chan struct{})
	}
}

func (e *Entry) setFailure(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastErr = err
}

// session returns the current session, waiting up to the dial timeout for
// one; the error says why there is none.
func (e *Entry) session(ctx context.Context) (*yamux.Session, error) {
	timer := time.NewTimer(e.cfg.DialTimeout)
	defer timer.Stop()
	for {
		e.mu.Lock()
		s, ready, lastErr := e.sess, e.ready, e.lastErr
		e.mu.Unlock()
		if s != nil && !s.IsClosed() {
			return s, nil
		}
		select {
		case <-ready:
		case <-timer.C:
			if lastErr == nil {
				lastErr = fmt.Errorf("no session after %v", e.cfg.DialTimeout)
			}
			return nil, lastErr
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// serveApp carries one application connection as a stream.
func (e *Entry) serveApp(ctx context.Context, app *net.TCPConn) {
	origin := app.RemoteAddr().String()
	log := e.log.With().Str("origin", origin).Logger()
	sess, err := e.session(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("closing application connection: no session with the exit")
		app.SetLinger(0)
		app.Close()
		return
	}
	st, err := sess.OpenStream()
	if err != nil {
		log.Warn().Err(err).Msg("closing application connection: cannot open a stream")
		app.SetLinger(0)
		app.Close()
		return
	}
	log = log.With().Uint32("stream", st.StreamID()).Logger()
	e.count.streams.Add(1)
	e.count.streamsTotal.Add(1)
	defer e.count.streams.Add(-1)
	start := time.Now()
	// The header goes out at once; application bytes follow without waiting
	// for the exit's status.
	if _, err := st.Write(streamHeader{origin: origin}.marshal()); err != nil {
		log.Warn().Err(err).Msg("closing application connection: stream lost")
		app.SetLinger(0)
		app.Close()
		st.Close()
		return
	}
	var status Status
	var msg string
	f := forward(app, st, e.pool, e.writeStall, func() error {
		var err error
		status, msg, err = readStatus(st)
		if err != nil {
			return fmt.Errorf("no status from the exit: %w", err)
		}
		if status != StatusOK {
			return fmt.Errorf("exit refused the stream: %s: %s", status, msg)
		}
		return nil
	})
	ev := log.Info()
	if f.aborted || status != StatusOK {
		ev = log.Warn().Bool("aborted", true)
	}
	if f.err != nil && !isClosed(f.err) {
		ev = ev.AnErr("reason", f.err)
	}
	if status != StatusOK {
		ev = ev.Int("status", int(status))
	}
	ev.Int64("bytes_out", f.toStream).Int64("bytes_in", f.fromStream).
		Dur("duration", time.Since(start)).Msg("connection closed")
}

// sessionEnd describes how a closed session ended: from its record stream,
// or, when that did not fail (a keepalive timeout, a local close), from
// yamux's own reason.
func sessionEnd(sess *yamux.Session, conn *frame.Conn) error {
	readErr := conn.ReadError()
	if readErr == nil || errors.Is(readErr, net.ErrClosed) {
		if _, err := sess.AcceptStream(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
			return err // e.g. yamux.ErrKeepAliveTimeout
		}
	}
	switch {
	case readErr == nil, errors.Is(readErr, net.ErrClosed):
		return errors.New("closed locally")
	case errors.Is(readErr, io.EOF):
		return errors.New("peer closed the session (CLOSE received)")
	case errors.Is(readErr, frame.ErrTruncated):
		return fmt.Errorf("connection cut without CLOSE, data may be truncated: %w", readErr)
	}
	return readErr
}
