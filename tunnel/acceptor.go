package tunnel

// The acceptor: how the exit lets an entry in. One value per exit holds
// everything that job needs, and nothing of serving streams; it gets its
// settings, key state, log and ledger from NewExit, and knows nothing else
// of the Exit.
//
//	connection accepted (Serve)
//	  -> enter: a place in the pending gate, or closed at once
//	  -> accept: the per-source limiter (refused with an ALERT), the
//	     handshake with the keys in force, the session, registered in the
//	     ledger until it ends
//	  -> an *established session, which exitSession serves
//
// accept is the one place a handshake's result becomes a session: a
// handshake that resumes a session instead would hand its connection over
// there and return nothing to serve.

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/rawio"
	"github.com/tunnel-dev/tunnel/tunnel/session"
	"github.com/tunnel-dev/tunnel/tunnel/sourcelimit"
)

// acceptor admits, authenticates and makes the sessions of entries. Its
// methods are safe for concurrent use.
type acceptor struct {
	log     zerolog.Logger
	keys    *atomic.Pointer[exitKeys] // the Exit's: the responder and the authorized keys
	limiter *sourcelimit.Limiter
	pending *listen.Gate // connections accepted whose handshake has not ended
	mux     session.Settings
	books   *ledger.Ledger // handshakes, refusals, sessions
	parked  *resumables    // sessions a resumption may continue (resumable.go)
}

// newAcceptor returns the acceptor of an exit with settings cfg (defaults
// filled in) and key state keys, which logs to log, counts in books and
// keeps resumable sessions in parked (the responder's SessionLookup).
func newAcceptor(cfg ExitSettings, keys *atomic.Pointer[exitKeys], log zerolog.Logger, books *ledger.Ledger, parked *resumables) *acceptor {
	return &acceptor{
		log:     log,
		keys:    keys,
		limiter: sourcelimit.New(cfg.HandshakeRate),
		pending: listen.ProcessGate(),
		mux:     session.Settings{KeepAlive: cfg.KeepAlive, Window: cfg.Window},
		books:   books,
		parked:  parked,
	}
}

// established is a session an entry has just made, authenticated.
type established struct {
	sess *session.Session
	peer streamPeer
	log  zerolog.Logger // with the peer's address and fingerprint
}

// enter takes a place in the pending gate for conn, just accepted, and
// reports whether it got one; if not, conn is closed and counted. accept
// gives the place back.
func (a *acceptor) enter(conn net.Conn) bool {
	if a.pending.Enter() {
		return true
	}
	// Too many connections without a finished handshake: this one is
	// closed at once, without an answer, so that a flood cannot hold every
	// descriptor.
	a.books.HandshakeRefused()
	a.log.Debug().Str("peer", conn.RemoteAddr().String()).Int("pending", a.pending.Pending()).
		Msg("connection closed: too many connections have not finished their handshake")
	conn.Close()
	return false
}

// accept authenticates conn, which holds a place in the pending gate
// (enter), and returns its session; or nil, having logged and counted why
// and closed conn, or having handed conn to the session it resumes. hard
// bounds the handshake; ctx ends with the exit's drain.
func (a *acceptor) accept(ctx, hard context.Context, conn net.Conn) *established {
	log := a.log.With().Str("peer", conn.RemoteAddr().String()).Logger()
	handshaken := sync.OnceFunc(a.pending.Leave) // the place enter took
	defer handshaken()
	admitted, err := a.limiter.Admit(conn.RemoteAddr(), time.Now())
	if err != nil {
		a.books.HandshakeRefused()
		log.Debug().Err(err).Msg("handshake refused") // a flood must not flood the log
		reason := "too many handshakes from your address; retry later"
		if errors.Is(err, sourcelimit.ErrTooMany) {
			reason = "too many handshakes in progress from your address; retry later"
		}
		a.keys.Load().resp.Refuse(conn, reason)
		return nil
	}
	res, err := a.keys.Load().resp.Handshake(hard, rawio.Wrap(conn))
	admitted()
	handshaken()
	if err != nil {
		lvl := log.Warn()
		if a.books.HandshakeFailed(err, false) == handshake.FailBusy {
			lvl = log.Debug() // a flood must not flood the log
		}
		lvl.Err(err).Msg("handshake failed")
		return nil
	}
	log = log.With().Str("peer_fingerprint", res.PeerFingerprint).Logger()
	if res.Resumed != nil {
		if err := a.parked.resume(*res.Resumed, res.Conn); err != nil {
			log.Warn().Err(err).Msg("resuming the session")
			return nil
		}
		a.books.Resumed()
		return nil
	}
	settings := a.mux
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
		return nil
	}
	if res.Ticket != nil {
		remove := a.parked.add(*res.Ticket, sess)
		go func() {
			defer remove()
			a.boundParking(ctx, log, sess, res.Ticket.PeerKeyID)
		}()
	}
	a.books.SessionUp(sess, res.PeerFingerprint, res.Duration)
	a.closeIfRevoked(log, sess, res.PeerKey)
	return &established{sess: sess, peer: streamPeer{fingerprint: res.PeerFingerprint}, log: log}
}
