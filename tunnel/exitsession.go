package tunnel

// The exit's side of a session: authenticate the entry (serveConn), accept
// its streams within the session's limits, and refuse streams with a
// status, draining what the entry still sends into them. What one accepted
// stream becomes is in incoming.go.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/rawio"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// serveConn authenticates one peer connection and serves its session.
func (e *Exit) serveConn(ctx, hard context.Context, conn net.Conn, streams *openStreams) {
	peer := conn.RemoteAddr().String()
	log := e.log.With().Str("peer", peer).Logger()
	handshaken := sync.OnceFunc(e.pending.Leave) // the place Serve took in the pending gate
	defer handshaken()
	admitted, err := e.limiter.admit(conn.RemoteAddr(), time.Now())
	if err != nil {
		e.books.handshakeRefused()
		log.Debug().Err(err).Msg("handshake refused") // a flood must not flood the log
		reason := "too many handshakes from your address; retry later"
		if errors.Is(err, errTooMany) {
			reason = "too many handshakes in progress from your address; retry later"
		}
		e.keys.Load().resp.Refuse(conn, reason)
		return
	}
	res, err := e.keys.Load().resp.Handshake(hard, rawio.Wrap(conn))
	admitted()
	handshaken()
	if err != nil {
		lvl := log.Warn()
		if e.books.handshakeFailed(err, false) == handshake.FailBusy {
			lvl = log.Debug() // a flood must not flood the log
		}
		lvl.Err(err).Msg("handshake failed")
		return
	}
	log = log.With().Str("peer_fingerprint", res.PeerFingerprint).Logger()
	if res.Resumed != nil {
		if err := e.resumables.resume(*res.Resumed, res.Conn); err != nil {
			log.Warn().Err(err).Msg("resuming the session")
			return
		}
		e.books.resumed.Add(1)
		return
	}
	settings := e.muxSettings()
	if res.Ticket != nil {
		settings.Resume = res.Ticket.Window
	}
	ev := log.Info().Str("handshake", logfield.Duration(res.Duration))
	if settings.Resume > 0 {
		ev = ev.Str("resume_window", logfield.Duration(settings.Resume))
	}
	ev.Msg("session established")

	sess, err := session.Server(res.Conn, settings, log)
	if err != nil {
		res.Conn.Close()
		log.Error().Err(err).Msg("starting the multiplexer")
		return
	}
	if res.Ticket != nil {
		defer e.resumables.add(*res.Ticket, sess)()
		go e.boundParking(ctx, log, sess, res.Ticket.PeerKeyID)
	}
	e.books.sessionUp(sess, res.PeerFingerprint, res.Duration)
	e.closeIfRevoked(log, sess, res.PeerKey)
	who := streamPeer{fingerprint: res.PeerFingerprint}
	start := time.Now()
	// Stop taking new streams when ctx ends (drain), close the session at hard.
	stopGoAway := context.AfterFunc(ctx, func() { sess.GoAway() })
	defer stopGoAway()
	stopHard := context.AfterFunc(hard, func() { sess.Close() })
	defer stopHard()

	// active counts the streams being served, against MaxStreams; refused
	// those refused and not yet closed by the peer, against maxRefused.
	var active, refused, refusedTotal atomic.Int64
	var overRefused sync.Once
	var running sync.WaitGroup // every stream goroutine of the session
	// endDrains stops the drains of refused streams when the session ends: a
	// yamux stream blocked in Read spins while its session shuts down, until
	// Close gets to it, and hundreds of them starve the shutdown.
	drainsEnded, endDrains := context.WithCancel(context.Background())
	defer endDrains()
	// refuse answers a non-zero status on st and drains it until the peer
	// closes it; a peer that keeps more than maxRefused refused streams open
	// loses its session.
	refuse := func(st *session.Stream, s Status, msg string) {
		refusedTotal.Add(1)
		defer refused.Add(-1)
		if refused.Add(1) > maxRefused {
			overRefused.Do(func() {
				log.Warn().Int("max_refused", maxRefused).
					Msg("closing the session: the peer keeps too many refused streams open")
			})
			endDrains()
			sess.Close()
			return
		}
		e.drainRefused(drainsEnded, st, s, msg)
	}
	var total int64
	busyLogged := false
	for {
		st, err := sess.Accept()
		if err != nil {
			break
		}
		total++
		running.Add(1)
		if active.Add(1) > int64(e.cfg.MaxStreams) {
			active.Add(-1)
			if !busyLogged {
				busyLogged = true
				log.Warn().Uint32("stream", st.ID()).Int("max_streams", e.cfg.MaxStreams).
					Msg("stream refused: session is at its stream limit (further refusals are counted in the session's closing line)")
			}
			e.books.refused(e.noService, StatusBusy)
			go func() {
				defer running.Done()
				defer st.Close()
				refuse(st, StatusBusy, fmt.Sprintf("exit is at its limit of %d streams per session", e.cfg.MaxStreams))
			}()
			continue
		}
		streams.Add(1)
		e.books.streamOpened()
		ended := func(s Status, msg string) {
			defer running.Done()
			defer st.Close()
			// A refused stream no longer counts as served, nor holds up a drain.
			active.Add(-1)
			e.books.streamClosed()
			streams.Done()
			if s != StatusOK {
				refuse(st, s, msg)
			}
		}
		go e.serveStream(hard, log, st, who, ended)
	}
	<-sess.Done()
	endDrains()
	running.Wait()
	reason, clean := sess.End()
	ev = log.Info()
	if !clean {
		ev = log.Warn() // truncation, a failed record, a reset, a keepalive timeout, a flood
	}
	ev.Err(reason).Int64("streams", total).Int64("streams_refused", refusedTotal.Load()).
		Str("duration", logfield.Duration(time.Since(start))).Msg("session closed")
}

// boundParking closes sess when its link breaks and it would park past the
// exit's bounds (resumables.overParked), or while the exit drains (ctx has
// ended): a parked session would hold the drain up for an entry that may
// be gone. It returns when sess ends.
func (e *Exit) boundParking(ctx context.Context, log zerolog.Logger, sess *session.Session, key [handshake.KeyIDLen]byte) {
	draining := ctx.Done()
	for {
		why := ""
		select {
		case <-sess.Done():
			return
		case <-draining:
			draining = nil
			if sess.Link().Down {
				why = "the exit is shutting down"
			}
		case <-sess.LinkDown():
			switch {
			case ctx.Err() != nil:
				why = "the exit is shutting down"
			case e.resumables.overParked(sess, key):
				e.books.resumeRefused.Add(1)
				why = fmt.Sprintf("too many sessions wait to be resumed (at most %d, %d per key)", maxParked, maxParkedPerKey)
			}
		}
		if why != "" {
			log.Warn().Str("reason", why).Msg("closing a session whose connection broke, without waiting for its resumption")
			sess.Close()
			return
		}
	}
}

// streamPeer is what the exit knows of the entry that opened a stream.
type streamPeer struct {
	fingerprint string
	access      access // the rules in force when the stream began (serveStream)
}

// logRefusal logs that a stream is refused with s and msg, for err.
func logRefusal(log zerolog.Logger, s Status, msg string, err error) {
	log.Warn().Int("status", int(s)).Str("status_text", s.String()).AnErr("reason", err).Msg(msg)
}

// maxRefused bounds the refused streams of one session that are still open
// (the peer has not closed them); past it the session is closed. Our entry
// closes a refused stream at once. Each costs a goroutine, and what the peer
// sends into it is discarded, but yamux takes up to one initial window
// (256 KiB) per stream into memory before it is read: 64 MiB at most.
const maxRefused = 256

// drainRefused answers a non-zero status and closes this side of st, then
// reads and discards until the peer closes its side or ctx ends, so that a
// peer writing into a refused stream makes the exit buffer nothing.
func (e *Exit) drainRefused(ctx context.Context, st *session.Stream, s Status, msg string) {
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	defer stop()
	st.SetWriteDeadline(time.Now().Add(time.Second))
	st.Write(marshalStatus(s, msg))
	st.CloseWrite()
	buf := make([]byte, 16<<10)
	for {
		_, err := st.Read(buf)
		st.Shrink() // keep no buffer for what is discarded
		if err != nil {
			return
		}
	}
}
