package tunnel

// The entry's outgoing streams. An application connection (serveApp) or a
// program's dial (DialContext, apientry.go) becomes a stream of the current
// session: open it, send the stream header, and wait for the exit's
// status. An exit that is going away may refuse the stream before it
// accepted it (a reset with no acknowledgement, before anything in it saw
// the stream); then the connection is offered again on the next session,
// up to maxCarries times in all. Each attempt is an outgoing value,
// counted while it lives.
//
//	serveApp: loop { attempt; header + kept bytes; relay.Start; status;
//	                 relay.Run (or Fail) } until not NotAccepted
//	DialContext: loop { attempt; header; status } until not refused before
//	             accepted; then a *Conn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/keeper"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// maxCarries bounds how often one application connection is offered to
// an exit.
const maxCarries = 3

// outgoing is one attempt to carry a connection: a stream on the current
// session, counted among the entry's open streams until done.
type outgoing struct {
	s     *keeper.Session
	st    *session.Stream
	log   zerolog.Logger // with the exit and the stream
	start time.Time
}

// attempt opens a stream on the current session and counts it.
func (e *Entry) attempt(ctx context.Context, log zerolog.Logger) (*outgoing, error) {
	s, st, err := e.keeper.Open(ctx)
	if err != nil {
		return nil, err
	}
	e.books.StreamOpened()
	return &outgoing{
		s: s, st: st, start: time.Now(),
		log: log.With().Str("peer", s.Exit.Peer).Uint32("stream", st.ID()).Logger(),
	}, nil
}

// done ends the count of o's stream.
func (e *Entry) done(o *outgoing) { e.books.StreamClosed() }

// refusedBeforeAccept reports whether err, from o's stream, is the exit's
// refusal before it accepted the stream: nothing reached it.
func (o *outgoing) refusedBeforeAccept(err error) bool {
	return errors.Is(err, session.ErrReset) && o.st.Pending()
}

// serveApp carries app, an application connection, as a stream to service
// (the wire name), whose counters are svc, and calls ended once the
// connection is done. When the exit refuses the stream before accepting
// it, the connection is carried on the next session, with what the
// application sent so far: no byte reached a backend, and the application
// notices nothing. Once the exit has accepted the stream, the relay goes on
// in a fresh goroutine and serveApp returns: this goroutine's stack grew
// while it opened the stream, and a connection that waits should hold two
// small stacks.
func (e *Entry) serveApp(ctx context.Context, app net.Conn, service serviceName, svc *ledger.Service, ended func()) {
	origin := appOrigin(app)
	lc := e.log.With().Str("service", service.String())
	if origin != "" {
		lc = lc.Str("origin", origin)
	}
	log := lc.Logger()
	e.books.Began(svc)
	// finish ends the connection, with a stream label.
	finish := func(label ledger.End) {
		e.books.Ended(svc, label)
		ended()
	}
	sent := new(relay.Unacked) // what the application sent while no exit had accepted it
	hdr := streamHeader{service: service.wire(), origin: origin}.marshal()
	for carries := 1; ; carries++ {
		res, status, state := e.carry(ctx, log, app, hdr, svc, sent, finish)
		switch {
		case state != carryEnded:
			return // finished by carry, or by the relay's goroutine
		case res.End != relay.NotAccepted:
			finish(endLabel(status, res))
			return
		case sent.Overflowed() || carries >= maxCarries:
			log.Warn().Int("attempts", carries).
				Msg("closing application connection: every exit tried refused the stream before accepting it")
			relay.Reset(app)
			finish(ledger.EndAborted)
			return
		}
		log.Info().Int("bytes", len(sent.Bytes())).
			Msg("the exit refused the stream before accepting it (it is going away); carrying the connection on the next session")
	}
}

// What became of one attempt to carry a connection.
type carryState int

const (
	carryEnded   carryState = iota // the stream ended, or was refused, before the relay ran: see the result
	carryFailed                    // no stream could be opened or written: the connection was reset, and finish called
	carryRunning                   // the exit accepted the stream: the relay runs in its own goroutine, which calls finish
)

// carry makes one attempt at carrying app: it opens a stream, sends hdr
// and what sent holds, starts the relay, and reads the exit's status. A
// stream the exit accepted is relayed on in a fresh goroutine, which logs
// and counts its end and calls finish (carryRunning). Otherwise the attempt
// is over: its end is logged and returned with the exit's status
// (carryEnded), or app was reset because no stream could be had, which is
// logged, and finish called (carryFailed).
func (e *Entry) carry(ctx context.Context, log zerolog.Logger, app net.Conn, hdr []byte, svc *ledger.Service, sent *relay.Unacked, finish func(label ledger.End)) (relay.Result, Status, carryState) {
	o, err := e.attempt(ctx, log)
	if err != nil {
		log.Warn().Err(err).Msg("closing application connection: no session with the exit")
		relay.Reset(app)
		finish(ledger.EndNoSession)
		return relay.Result{}, 0, carryFailed
	}
	resent := sent.Bytes()
	// The header goes out at once; application bytes follow without waiting
	// for the exit's status.
	if _, err := o.st.Write(append(hdr[:len(hdr):len(hdr)], resent...)); err != nil {
		o.log.Warn().Err(err).Msg("closing application connection: stream lost")
		relay.Reset(app)
		o.st.Close()
		e.done(o)
		finish(ledger.EndAborted)
		return relay.Result{}, 0, carryFailed
	}
	r := relay.Start(app, o.st, relay.Options{
		Pool: e.pool, Stall: e.writeStall,
		FromConn: svc.Moved().FromConn, ToConn: svc.Moved().ToConn,
		Unacked: sent,
	})
	status, msg, err := readStatus(o.st)
	var res relay.Result
	switch {
	case err != nil:
		res = r.Fail(fmt.Errorf("no status from the exit: %w", err))
	case status != StatusOK:
		res = r.Fail(fmt.Errorf("exit refused the stream (%s): %s", status, msg))
	default:
		r.Go(func(res relay.Result) { e.relayEnded(o, res, int64(len(resent)), finish) })
		return res, status, carryRunning
	}
	if res.End != relay.NotAccepted {
		res.ToStream += int64(len(resent))
		e.logCarried(o.log, res, status, time.Since(o.start))
	}
	e.done(o)
	return res, status, carryEnded
}

// relayEnded logs the end of o's accepted stream, relayed until res, and
// finishes it.
func (e *Entry) relayEnded(o *outgoing, res relay.Result, resent int64, finish func(label ledger.End)) {
	res.ToStream += resent
	e.logCarried(o.log, res, StatusOK, time.Since(o.start))
	e.done(o)
	finish(resultLabel(res))
}

// appOrigin is the origin of app's streams (PROTOCOL.md section 4): its
// address "ip:port" over TCP; empty over a UNIX socket, whose peer has no
// address of that form (and usually no name at all).
//
// An IPv6 link-local address's zone (fe80::1%eth0) names an interface of
// the entry's host, meaningless to the exit, which refuses an origin with
// one: it is left out.
func appOrigin(app net.Conn) string {
	if a, ok := app.RemoteAddr().(*net.TCPAddr); ok {
		return (&net.TCPAddr{IP: a.IP, Port: a.Port}).String()
	}
	return ""
}

// logCarried logs the end of a stream that the exit accepted, or refused
// with status: at debug when it ended cleanly, else at warn.
func (e *Entry) logCarried(log zerolog.Logger, res relay.Result, status Status, d time.Duration) {
	ev := log.Debug() // one per connection: at info they would swamp the sessions' lines
	if res.Aborted() || status != StatusOK {
		ev = log.Warn().Bool("aborted", true)
	}
	if status == StatusRefused {
		// Which key the exit refused, for the operator who grants access.
		ev = ev.Str("fingerprint", e.keeper.Fingerprint())
	}
	if res.Err != nil && !session.IsClosedErr(res.Err) {
		ev = ev.AnErr("reason", res.Err)
	}
	if status != StatusOK {
		ev = ev.Int("status", int(status))
	}
	ev.Int64("bytes_to_backend", res.ToStream).Int64("bytes_to_app", res.FromStream).
		Str("duration", logfield.Duration(d)).Msg("connection closed")
}
