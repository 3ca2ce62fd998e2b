package tunnel

// The exit's incoming stream: read its header, check the access rules,
// then either refuse it with a status (ended hands it back to the session
// to drain) or dial the service's backend, answer status 0, and relay
// until both directions are done. A service a program serves itself goes
// to its Listener instead (apiexit.go).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/proxyheader"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// forwarder serves the exit's incoming streams: it checks each against the
// access rules in force, then dials its service's backend and relays, or
// hands it to the service's Listener. It holds the services and what
// reaching them takes, and nothing of sessions. Safe for concurrent use.
type forwarder struct {
	headerTimeout time.Duration             // for a stream's header: the handshake timeout
	dialTimeout   time.Duration             // for a backend's dial, or a Listener's Accept
	keys          *atomic.Pointer[exitKeys] // the Exit's: the access rules
	routes        *routeTable               // the services (services.go)
	local         localServices             // the services the program serves (apiexit.go)
	backlog       int                       // of each Listener: acceptBacklog; tests make it small
	noService     *ledger.Service           // streams refused before they named one of routes
	books         *ledger.Ledger            // every count, once (package ledger)
	pool          *relay.Pool
	dialer        net.Dialer
	writeStall    time.Duration
}

// newForwarder returns the forwarder of an exit with settings cfg
// (defaults filled in) and key state keys, which counts in books. It
// refuses services that the settings give wrong (newRouteTable).
func newForwarder(cfg ExitSettings, keys *atomic.Pointer[exitKeys], books *ledger.Ledger) (*forwarder, error) {
	routes, err := newRouteTable(cfg, books)
	if err != nil {
		return nil, err
	}
	return &forwarder{
		headerTimeout: cfg.HandshakeTimeout,
		dialTimeout:   cfg.DialTimeout,
		keys:          keys,
		routes:        routes,
		backlog:       acceptBacklog,
		noService:     books.Service(""),
		books:         books,
		pool:          relay.NewPool(),
		dialer:        net.Dialer{Timeout: cfg.DialTimeout},
		writeStall:    relay.DefaultWriteStall,
	}, nil
}

// serveStream reads the stream header, checks that the peer may reach the
// service it names, dials the service's backend, answers the status and
// relays; ended is called once the stream is done. If it refuses the
// stream instead, it logs and counts why and calls ended at once with the
// status and message to answer, and leaves st to ended. ctx bounds the
// dial: it ends with the drain, not as the drain starts, so that a stream
// accepted before GoAway is served.
func (f *forwarder) serveStream(ctx context.Context, log zerolog.Logger, st *session.Stream, peer streamPeer, ended func(s Status, msg string)) {
	svc := f.noService
	// refuse ends a stream that had not begun under svc.
	refuse := func(s Status, msg string, err error) {
		f.books.Refused(svc, statusLabel(s))
		logRefusal(log, s, msg, err)
		ended(s, msg)
	}
	// Each stream is checked against the rules in force when it opens, so
	// that a reload that narrows them reaches live sessions too.
	peer.access = f.keys.Load().access
	log = log.With().Uint32("stream", st.ID()).Logger()
	st.SetReadDeadline(time.Now().Add(f.headerTimeout))
	hdr, err := readStreamHeader(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		var msg string
		var ne net.Error
		switch {
		case errors.Is(err, errStreamHeader):
			msg = err.Error()
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			msg = "stream closed before its header was complete"
		case errors.As(err, &ne) && ne.Timeout():
			msg = fmt.Sprintf("no complete stream header within %v", f.headerTimeout)
		default:
			msg = fmt.Sprintf("reading the stream header: %v", err)
		}
		refuse(StatusRefused, msg, nil)
		return
	}
	if !validOrigin(hdr.origin) {
		log.Warn().Msgf("the entry claims origin %+q, which is neither empty nor ip:port", hdr.origin)
		refuse(StatusRefused, "bad stream header: the origin is neither empty nor ip:port", nil)
		return
	}
	if hdr.origin != "" {
		// What the entry says it saw; the exit cannot check it.
		log = log.With().Str("claimed_origin", hdr.origin).Logger()
	}
	// readStreamHeader let through printable ASCII only: safe to log.
	name := wireServiceName(hdr.service)
	log = log.With().Str("service", name.String()).Logger()
	r := f.routes.byName[name]
	if r == nil {
		if l := f.local.get(name); l != nil {
			ended(f.serveLocal(ctx.Done(), log, st, peer, hdr.origin, l))
			return
		}
		refuse(StatusUnknownService, unknownService(name, f.visible(peer)), nil)
		return
	}
	svc = r.count
	if !peer.access.allows(r.name, peer.fingerprint) {
		refuse(StatusRefused, policyRefusal(peer.fingerprint, r.name.String()), nil)
		return
	}
	f.books.Began(svc)
	// fail ends a stream that began, with a status other than 0.
	fail := func(s Status, msg string, err error) {
		f.books.Ended(svc, statusLabel(s))
		logRefusal(log, s, msg, err)
		ended(s, msg)
	}
	start := time.Now()
	c, err := f.dialer.DialContext(ctx, r.network, r.dialAddr)
	f.books.BackendDial(time.Since(start), err)
	if err != nil {
		msg := fmt.Sprintf("backend %s unreachable: %v", r.addr, err)
		if r.name != "" {
			msg = fmt.Sprintf("service %q: %s", r.name, msg)
		}
		fail(StatusUnreachable, msg, err)
		return
	}
	r.probe.Accepted(time.Now())
	backend := c
	if r.proxyProtocol {
		if err := proxyheader.Write(backend, hdr.origin, peer.fingerprint, f.dialTimeout); err != nil {
			backend.Close()
			fail(StatusUnreachable, fmt.Sprintf("backend %s: sending the PROXY protocol header: %v", r.addr, err), err)
			return
		}
	}
	if _, err := st.Write(marshalStatus(StatusOK, "")); err != nil {
		backend.Close()
		st.CloseWrite()
		log.Warn().Err(err).Msg("stream lost before the status was sent")
		f.books.Ended(svc, ledger.EndAborted)
		ended(StatusOK, "")
		return
	}
	rl := relay.Start(backend, st, relay.Options{
		Pool: f.pool, Stall: f.writeStall,
		FromConn: svc.Moved().FromConn, ToConn: svc.Moved().ToConn,
	})
	// The relay goes on in goroutines of its own: this one's stack grew in
	// the backend's dial (relay.Relay.Go).
	rl.Go(func(res relay.Result) { f.relayEnded(res, svc, log, start, ended) })
}

// relayEnded counts, logs and ends a stream that was relayed until res.
func (f *forwarder) relayEnded(res relay.Result, svc *ledger.Service, log zerolog.Logger, start time.Time, ended func(s Status, msg string)) {
	f.books.Ended(svc, resultLabel(res))
	ev := log.Debug() // one per connection: at info they would swamp the sessions' lines
	if res.Aborted() {
		ev = log.Warn().Bool("aborted", true)
	}
	if res.Err != nil && !session.IsClosedErr(res.Err) {
		ev = ev.AnErr("reason", res.Err)
	}
	ev.Int64("bytes_to_backend", res.FromStream).Int64("bytes_to_app", res.ToStream).
		Str("duration", logfield.Duration(time.Since(start))).Msg("stream closed")
	ended(StatusOK, "")
}

// unknownService is the message for a stream naming a service the exit
// does not have: it lists the services visible, those the peer may reach,
// and no other.
func unknownService(name serviceName, visible []string) string {
	if len(visible) == 0 {
		return fmt.Sprintf("unknown service %q: this exit has no service for your key", name)
	}
	return fmt.Sprintf("unknown service %q: this exit has %s", name, strings.Join(visible, ", "))
}

// policyRefusal is the message for a stream the access rules refuse.
func policyRefusal(fp, service string) string {
	return fmt.Sprintf("key %s may not reach service %q: the exit's --allow rules do not list it", fp, service)
}

// validOrigin reports whether origin, as an entry reports it in a stream
// header, is empty or an IP address and port (PROTOCOL.md section 4).
func validOrigin(origin string) bool {
	if origin == "" {
		return true
	}
	host, port, err := net.SplitHostPort(origin)
	if err != nil {
		return false
	}
	if ip, err := netip.ParseAddr(host); err != nil || ip.Zone() != "" {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}
