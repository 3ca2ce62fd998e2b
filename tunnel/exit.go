package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/handshake"
)

// ExitConfig is what an exit agent needs: its settings, which the caller
// has validated (config.Exit.Validate; the key paths in them are not used),
// and its keys.
type ExitConfig struct {
	Settings   config.Exit
	Key        *rsa.PrivateKey
	Authorized *handshake.KeySet
}

// Exit accepts entry agents, authenticates them, and forwards each of their
// streams to the backend.
type Exit struct {
	cfg        config.Exit
	log        zerolog.Logger
	resp       *handshake.Responder
	limiter    *sourceLimiter
	pool       *bufPool
	dialer     net.Dialer
	writeStall time.Duration
	count      counters
}

// NewExit checks cfg and returns an exit agent. It starts nothing.
func NewExit(cfg ExitConfig, log zerolog.Logger) (*Exit, error) {
	if cfg.Key == nil || cfg.Authorized == nil {
		return nil, errors.New("tunnel: exit needs its private key and the authorized entry keys")
	}
	resp, err := handshake.NewResponder(handshake.Config{
		PrivateKey: cfg.Key,
		Authorized: cfg.Authorized,
		Timeout:    cfg.Settings.HandshakeTimeout,
	}, cfg.Settings.MaxHandshakes)
	if err != nil {
		return nil, err
	}
	return &Exit{
		cfg:        cfg.Settings,
		log:        log.With().Str("role", "exit").Logger(),
		resp:       resp,
		limiter:    newSourceLimiter(cfg.Settings.HandshakeRate),
		pool:       newBufPool(),
		dialer:     net.Dialer{Timeout: cfg.Settings.DialTimeout},
		writeStall: defaultWriteStall,
	}, nil
}

// Stats returns the exit's counters.
func (e *Exit) Stats() Stats { return e.count.stats("exit") }

// Serve accepts entry agents on ln until ctx is done, then stops accepting,
// lets open streams finish for up to the drain timeout, closes everything
// and returns. It closes ln.
func (e *Exit) Serve(ctx context.Context, ln net.Listener) error {
	// hard ends every session: at the end of the drain, or at once on error.
	hard, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	var wg sync.WaitGroup
	released := make(chan struct{})
	go func() {
		defer close(released)
		releaseWhenQuiet(hard, releaseCheck)
	}()
	var streams sync.WaitGroup

	stopAccept := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopAccept()
	var acceptErr error
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !isClosed(err) {
				acceptErr = fmt.Errorf("tunnel: accept: %w", err)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.serveConn(ctx, hard, conn, &streams)
		}()
	}

	// Drain: open streams may finish until the deadline. Then entries,
	// which got GoAway, close their sessions themselves (so that nothing
	// yamux still has queued is lost); what is left at the deadline is cut.
	drained := make(chan struct{})
	go func() { streams.Wait(); close(drained) }()
	sessionsDone := make(chan struct{})
	go func() { wg.Wait(); close(sessionsDone) }()
	if acceptErr == nil {
		e.log.Info().Str("drain_timeout", logDuration(e.cfg.DrainTimeout)).Msg("shutting down: draining open streams")
		deadline := time.NewTimer(e.cfg.DrainTimeout)
		defer deadline.Stop()
		select {
		case <-drained:
			select {
			case <-sessionsDone:
			case <-deadline.C:
			}
		case <-deadline.C:
			e.log.Warn().Msg("drain timeout: closing the streams still open")
		}
	}
	stopAll()
	<-released
	<-sessionsDone
	<-drained
	return acceptErr
}

// serveConn authenticates one peer connection and serves its session.
func (e *Exit) serveConn(ctx, hard context.Context, conn net.Conn, streams *sync.WaitGroup) {
	peer := conn.RemoteAddr().String()
	log := e.log.With().Str("peer", peer).Logger()
	if !e.limiter.allow(conn.RemoteAddr(), time.Now()) {
		e.count.hsRefused.Add(1)
		log.Debug().Msg("handshake refused: over the per-source handshake rate")
		e.resp.Refuse(conn, "too many handshakes from your address; retry later")
		return
	}
	res, err := e.resp.Handshake(hard, conn)
	if err != nil {
		lvl := log.Warn()
		if errors.Is(err, handshake.ErrBusy) {
			e.count.hsRefused.Add(1)
			lvl = log.Debug() // a flood must not flood the log
		} else {
			e.count.hsFailures.Add(1)
		}
		lvl.Err(err).Msg("handshake failed")
		return
	}
	e.count.sessions.Add(1)
	defer e.count.sessions.Add(-1)
	log = log.With().Str("peer_fingerprint", res.PeerFingerprint).Logger()
	log.Info().Str("handshake", logDuration(res.Duration)).Msg("session established")

	mc := newMuxConn(res.Conn)
	sess, err := yamux.Server(mc, muxSettings{e.cfg.KeepAlive, e.cfg.Window}.config(log))
	if err != nil {
		res.Conn.Close()
		log.Error().Err(err).Msg("starting the multiplexer")
		return
	}
	go mc.supervise(sess)
	start := time.Now()
	// Stop taking new streams when ctx ends (drain), close the session at hard.
	stopGoAway := context.AfterFunc(ctx, func() { sess.GoAway() })
	defer stopGoAway()
	stopHard := context.AfterFunc(hard, func() { sess.Close() })
	defer stopHard()

	var active, refused atomic.Int64
	var refusing sync.WaitGroup
	defer refusing.Wait()
	var total, refusedTotal int64
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		total++
		if active.Add(1) > int64(e.cfg.MaxStreams) {
			active.Add(-1)
			mc.fins.forget(st.StreamID())
			if refused.Add(1) > maxRefused {
				log.Warn().Int("max_streams", e.cfg.MaxStreams).Msg("closing the session: the peer keeps opening streams past the limit")
				sess.Close()
				continue
			}
			if refusedTotal++; refusedTotal == 1 {
				log.Warn().Uint32("stream", st.StreamID()).Int("max_streams", e.cfg.MaxStreams).
					Msg("stream refused: session is at its stream limit (further refusals are counted in the session's closing line)")
			}
			refusing.Add(1)
			go func() {
				defer refusing.Done()
				defer refused.Add(-1)
				e.refuseBusy(st)
			}()
			continue
		}
		streams.Add(1)
		e.count.streams.Add(1)
		e.count.streamsTotal.Add(1)
		go func() {
			defer streams.Done()
			defer active.Add(-1)
			defer e.count.streams.Add(-1)
			defer mc.fins.forget(st.StreamID())
			e.serveStream(ctx, log, st, mc)
		}()
	}
	<-sess.CloseChan()
	reason, clean := sessionEnd(sess, res.Conn)
	ev := log.Info()
	if !clean {
		ev = log.Warn() // truncation, a failed record, a reset, a keepalive timeout, a flood
	}
	ev.Err(reason).Int64("streams", total).Int64("streams_refused", refusedTotal).
		Str("duration", logDuration(time.Since(start))).Msg("session closed")
}

// serveStream reads the stream header, dials the backend, answers the
// status and forwards.
func (e *Exit) serveStream(ctx context.Context, log zerolog.Logger, st *yamux.Stream, mc *muxConn) {
	log = log.With().Uint32("stream", st.StreamID()).Logger()
	st.SetReadDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
	hdr, err := readStreamHeader(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		log.Warn().Err(err).Msg("stream header unreadable; closing the stream")
		st.Close()
		return
	}
	log = log.With().Str("origin", hdr.origin).Logger()
	if hdr.service != "" {
		e.refuse(log, st, StatusUnknownService, fmt.Sprintf("unknown service %q: this exit forwards only to its default backend", hdr.service), nil)
		return
	}
	start := time.Now()
	c, err := e.dialer.DialContext(ctx, "tcp", e.cfg.Forward)
	if err != nil {
		e.refuse(log, st, StatusUnreachable, fmt.Sprintf("backend %s unreachable: %v", e.cfg.Forward, err), err)
		return
	}
	backend := c.(*net.TCPConn)
	if _, err := st.Write(marshalStatus(StatusOK, "")); err != nil {
		backend.Close()
		st.Close()
		log.Warn().Err(err).Msg("stream lost before the status was sent")
		return
	}
	f := forward(backend, st, mc, e.pool, e.writeStall, nil)
	ev := log.Info()
	if f.aborted {
		ev = log.Warn().Bool("aborted", true)
	}
	if f.err != nil && !isClosed(f.err) {
		ev = ev.AnErr("reason", f.err)
	}
	ev.Int64("bytes_to_backend", f.fromStream).Int64("bytes_to_app", f.toStream).
		Str("duration", logDuration(time.Since(start))).Msg("stream closed")
}

// maxRefused bounds the refused streams of one session that are still open
// (the peer has not closed them); past it the session is closed. Our entry
// closes a refused stream at once. Each costs a goroutine, and what the peer
// sends into it is discarded, but yamux takes up to one initial window
// (256 KiB) per stream into memory before it is read: 64 MiB at most.
const maxRefused = 256

// refuseBusy answers status 4 and closes this side of st, then reads and
// discards until the peer closes its side or the session ends, so that a
// peer writing into a refused stream makes the exit buffer nothing.
func (e *Exit) refuseBusy(st *yamux.Stream) {
	st.SetWriteDeadline(time.Now().Add(time.Second))
	st.Write(marshalStatus(StatusBusy, fmt.Sprintf("exit is at its limit of %d streams per session", e.cfg.MaxStreams)))
	st.Close()
	buf := make([]byte, 16<<10)
	for {
		_, err := st.Read(buf)
		st.Shrink() // keep no buffer for what is discarded
		if err != nil {
			return
		}
	}
}

// refuse answers a non-zero status and closes the stream.
func (e *Exit) refuse(log zerolog.Logger, st *yamux.Stream, s Status, msg string, err error) {
	log.Warn().Int("status", int(s)).Str("status_text", s.String()).AnErr("reason", err).Msg(msg)
	st.SetWriteDeadline(time.Now().Add(time.Second))
	st.Write(marshalStatus(s, msg))
	st.Close()
}
