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
// jitter; reset once a session has lived stableSession. An application
// connecting while there is no session cuts the wait short, but attempts
// are never closer than minBackoff.
const (
	minBackoff    = 100 * time.Millisecond
	maxBackoff    = 30 * time.Second
	stableSession = 10 * time.Second
)

// session is one authenticated session with the exit.
type session struct {
	mux  *yamux.Session
	conn *frame.Conn // the record layer under mux
	mc   *muxConn
}

// Entry accepts application connections and carries each as a stream of
// one long-lived, authenticated session to the exit.
type Entry struct {
	cfg        config.Entry
	hs         handshake.Config
	log        zerolog.Logger
	pool       *bufPool
	writeStall time.Duration
	count      counters

	kick chan struct{} // an application waits: retry now (buffered, 1)

	mu      sync.Mutex
	cur     *session      // nil while there is none
	changed chan struct{} // closed, and replaced, whenever cur or lastErr changes
	lastErr error         // why the last attempt to reach the exit failed
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
		kick:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
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
	if e.cur == nil {
		return nil
	}
	return e.cur.conn
}

// Healthy reports whether a session with the exit is up.
func (e *Entry) Healthy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cur != nil && !e.cur.mux.IsClosed()
}

// Serve accepts applications on ln until ctx is done, then stops accepting,
// lets open connections finish for up to the drain timeout, closes
// everything and returns. It closes ln.
func (e *Entry) Serve(ctx context.Context, ln net.Listener) error {
	hard, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	var wg, conns sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		releaseWhenQuiet(hard, releaseCheck)
	}()

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
		e.log.Info().Str("drain_timeout", logDuration(e.cfg.DrainTimeout)).Msg("shutting down: draining open connections")
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
// with backoff. A session lives until hard ends, so that draining
// connections keep it. When the exit sends GoAway (it is shutting down),
// the session is left to finish its streams and a new one is made at once.
func (e *Entry) maintain(ctx, hard context.Context) {
	var old sync.WaitGroup // sessions finishing their streams after GoAway
	defer old.Wait()
	backoff := minBackoff
	var last time.Time
	for ctx.Err() == nil {
		if !sleep(ctx, minBackoff-time.Since(last), nil) {
			return
		}
		last = time.Now()
		s, err := e.connect(ctx)
		if err != nil {
			e.count.hsFailures.Add(1)
			e.setFailure(err)
			wait := backoff/2 + rand.N(backoff)
			e.log.Error().Err(err).Str("retry_in", logDuration(wait)).Msg("cannot establish a session with the exit")
			backoff = min(2*backoff, maxBackoff)
			sleep(ctx, wait, e.kick)
			continue
		}
		start := time.Now()
		e.setSession(s)
		e.count.sessions.Add(1)
		select {
		case <-s.mc.goAway:
			e.clearSession(s, errors.New("the exit is going away"))
			e.log.Info().Msg("the exit is shutting this session down; its open streams may finish, new ones go to a new session")
			old.Add(1)
			go func() {
				defer old.Done()
				e.retire(s, hard)
				e.count.sessions.Add(-1)
			}()
			backoff = minBackoff
			continue
		case <-s.mux.CloseChan():
		case <-ctx.Done():
			e.clearSession(s, errors.New("entry is shutting down"))
			e.hold(s, hard)
		}
		e.count.sessions.Add(-1)
		reason, _ := sessionEnd(s.mux, s.conn)
		e.clearSession(s, fmt.Errorf("session lost: %v", reason))
		if ctx.Err() == nil {
			e.log.Warn().Err(reason).Str("duration", logDuration(time.Since(start))).Msg("session with the exit lost; reconnecting")
		}
		if time.Since(start) > stableSession {
			backoff = minBackoff
		}
	}
}

// hold waits for s to close, closing it when hard ends.
func (e *Entry) hold(s *session, hard context.Context) {
	select {
	case <-s.mux.CloseChan():
	case <-hard.Done():
		s.mux.Close()
	}
}

// retirePoll is how often a session the exit is shutting down is checked
// for open streams.
const retirePoll = 100 * time.Millisecond

// retire closes s once its last stream is done (or when hard ends). The
// entry, as the yamux client, ends a session the exit sent GoAway on: if
// the exit closed it instead, the close could overtake the FINs yamux has
// queued but not yet sent, and the entry would take complete streams for
// cut ones.
func (e *Entry) retire(s *session, hard context.Context) {
	t := time.NewTicker(retirePoll)
	defer t.Stop()
	for {
		select {
		case <-s.mux.CloseChan():
			return
		case <-hard.Done():
			s.mux.Close()
			return
		case <-t.C:
			if s.mux.NumStreams() == 0 {
				s.mux.Close()
				return
			}
		}
	}
}

// sleep waits for d, or until wake fires or ctx ends; it reports whether
// ctx is still alive.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-wake:
		case <-ctx.Done():
		}
	}
	return ctx.Err() == nil
}

// connect dials the exit, runs the handshake and starts the multiplexer.
func (e *Entry) connect(ctx context.Context) (*session, error) {
	d := net.Dialer{Timeout: e.cfg.DialTimeout, KeepAlive: e.cfg.KeepAlive}
	c, err := d.DialContext(ctx, "tcp", e.cfg.Peer)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	res, err := handshake.Initiate(ctx, c, &e.hs)
	if err != nil {
		return nil, err
	}
	mc := newMuxConn(res.Conn)
	mux, err := yamux.Client(mc, muxSettings{e.cfg.KeepAlive, e.cfg.Window}.config(e.log))
	if err != nil {
		res.Conn.Close()
		return nil, err
	}
	go mc.supervise(mux)
	e.log.Info().Str("peer_fingerprint", res.PeerFingerprint).Str("handshake", logDuration(res.Duration)).Msg("session established")
	return &session{mux: mux, conn: res.Conn, mc: mc}, nil
}

// notify wakes the waiters of session. Callers hold mu.
func (e *Entry) notify() {
	close(e.changed)
	e.changed = make(chan struct{})
}

func (e *Entry) setSession(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cur, e.lastErr = s, nil
	e.notify()
}

// clearSession forgets s, if it is still the current session.
func (e *Entry) clearSession(s *session, why error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == s {
		e.cur, e.lastErr = nil, why
		e.notify()
	}
}

func (e *Entry) setFailure(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastErr = err
	e.notify()
}

// lasting reports errors that retrying soon will not cure: the exit
// rejected our key, or is not the exit we pin, or not a tunnel agent.
func lasting(err error) bool {
	for _, target := range []error{
		handshake.ErrUnknownKey, handshake.ErrBadSignature, handshake.ErrDecrypt,
		handshake.ErrNotTunnel, handshake.ErrUnsupportedVersion, handshake.ErrNoCommonSuite,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// session returns the current session, waiting up to the dial timeout for
// one (and asking maintain to retry now); the error says why there is none.
// After a failure that retrying will not cure it does not wait.
func (e *Entry) session(ctx context.Context) (*session, error) {
	timer := time.NewTimer(e.cfg.DialTimeout)
	defer timer.Stop()
	for {
		e.mu.Lock()
		s, changed, lastErr := e.cur, e.changed, e.lastErr
		e.mu.Unlock()
		if s != nil && !s.mux.IsClosed() {
			return s, nil
		}
		if lasting(lastErr) {
			return nil, lastErr
		}
		select {
		case e.kick <- struct{}{}:
		default:
		}
		select {
		case <-changed:
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

// openStream opens a stream on the current session. A session the exit is
// just shutting down refuses it; then it tries the next session once.
func (e *Entry) openStream(ctx context.Context) (*session, *yamux.Stream, error) {
	for attempt := 0; ; attempt++ {
		s, err := e.session(ctx)
		if err != nil {
			return nil, nil, err
		}
		st, err := s.mux.OpenStream()
		if err == nil {
			s.mc.fins.watch(st.StreamID())
			return s, st, nil
		}
		if attempt > 0 || !errors.Is(err, yamux.ErrRemoteGoAway) {
			return nil, nil, err
		}
		e.clearSession(s, err)
	}
}

// serveApp carries one application connection as a stream.
func (e *Entry) serveApp(ctx context.Context, app *net.TCPConn) {
	origin := app.RemoteAddr().String()
	log := e.log.With().Str("origin", origin).Logger()
	s, st, err := e.openStream(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("closing application connection: no session with the exit")
		app.SetLinger(0)
		app.Close()
		return
	}
	id := st.StreamID()
	defer s.mc.fins.forget(id)
	log = log.With().Uint32("stream", id).Logger()
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
	f := forward(app, st, s.mc, e.pool, e.writeStall, func() error {
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
	ev.Int64("bytes_to_backend", f.toStream).Int64("bytes_to_app", f.fromStream).
		Str("duration", logDuration(time.Since(start))).Msg("connection closed")
}

// sessionEnd describes how a closed session ended: from its record stream,
// or, when that did not fail (a keepalive timeout, a ping flood, a local
// close), from yamux's own reason. clean is false for every end that may
// have cut data.
func sessionEnd(sess *yamux.Session, conn *frame.Conn) (reason error, clean bool) {
	readErr := conn.ReadError()
	if readErr == nil || errors.Is(readErr, net.ErrClosed) {
		if _, err := sess.AcceptStream(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
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
