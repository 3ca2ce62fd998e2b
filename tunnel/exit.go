package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
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
	Version    string // this build's, for the build-info metric
}

// Exit accepts entry agents, authenticates them, and forwards each of their
// streams to the backend.
type Exit struct {
	cfg        config.Exit
	log        zerolog.Logger
	resp       atomic.Pointer[handshake.Responder] // swapped by Reload
	authorized atomic.Pointer[handshake.KeySet]    // the entry keys resp accepts
	limiter    *sourceLimiter
	pool       *bufPool
	dialer     net.Dialer
	routes     *routeTable            // the services (services.go)
	local      localServices          // the services the program serves (listener.go)
	backlog    int                    // of each Listener: acceptBacklog; tests make it small
	access     atomic.Pointer[access] // resolved with authorized; swapped by Reload
	noService  *serviceCounters       // streams refused before they named one of routes
	met        *metricSet
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
	x := &Exit{
		cfg:        cfg.Settings,
		log:        log.With().Str("role", "exit").Logger(),
		limiter:    newSourceLimiter(cfg.Settings.HandshakeRate),
		pool:       newBufPool(),
		dialer:     net.Dialer{Timeout: cfg.Settings.DialTimeout},
		writeStall: defaultWriteStall,
		backlog:    acceptBacklog,
	}
	x.resp.Store(resp)
	x.authorized.Store(cfg.Authorized)
	x.met = newMetrics("exit", cfg.Version, &x.count)
	x.noService = x.met.service("")
	x.routes = newRouteTable(cfg.Settings, x.met)
	acc, unresolved := resolveAccess(cfg.Settings.Access, cfg.Authorized)
	if len(unresolved) > 0 {
		return nil, errUnresolved(unresolved)
	}
	x.access.Store(&acc)
	return x, nil
}

// Stats returns the exit's counters, with those of each service.
func (e *Exit) Stats() Stats {
	st := e.count.stats("exit")
	st.Services = e.met.serviceStats()
	return st
}

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
	var streams openStreams

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
	drained := streams.drained()
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
	<-sessionsDone // every stream has ended with its session
	return acceptErr
}

// openStreams counts the streams being served, for the drain. A session
// may accept a stream after the drain has begun (its SYN came before the
// GoAway), which a sync.WaitGroup does not allow while Wait runs.
type openStreams struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil when nobody waits
}

func (o *openStreams) Add(delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n += delta
	if o.n == 0 && o.idle != nil {
		close(o.idle)
		o.idle = nil
	}
}

func (o *openStreams) Done() { o.Add(-1) }

// drained returns a channel that is closed once no stream is open.
func (o *openStreams) drained() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	ch := make(chan struct{})
	if o.n == 0 {
		close(ch)
	} else {
		o.idle = ch
	}
	return ch
}

// serveConn authenticates one peer connection and serves its session.
func (e *Exit) serveConn(ctx, hard context.Context, conn net.Conn, streams *openStreams) {
	peer := conn.RemoteAddr().String()
	log := e.log.With().Str("peer", peer).Logger()
	admitted, err := e.limiter.admit(conn.RemoteAddr(), time.Now())
	if err != nil {
		e.count.hsRefused.Add(1)
		e.met.handshakeRateLimited()
		log.Debug().Err(err).Msg("handshake refused") // a flood must not flood the log
		reason := "too many handshakes from your address; retry later"
		if errors.Is(err, errTooMany) {
			reason = "too many handshakes in progress from your address; retry later"
		}
		e.resp.Load().Refuse(conn, reason)
		return
	}
	res, err := e.resp.Load().Handshake(hard, withRawIO(conn))
	admitted()
	if err != nil {
		e.met.handshakeFailed(err, false)
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
	e.met.sessionUp(sess, res.Conn, res.PeerFingerprint, res.Duration)
	e.closeIfRevoked(log, sess, res.PeerKey)
	// The session keeps the access rules in force now.
	who := streamPeer{fingerprint: res.PeerFingerprint, access: *e.access.Load()}
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
	refuse := func(st *yamux.Stream, s Status, msg string) {
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
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		total++
		running.Add(1)
		if active.Add(1) > int64(e.cfg.MaxStreams) {
			active.Add(-1)
			mc.fins.forget(st.StreamID())
			if !busyLogged {
				busyLogged = true
				log.Warn().Uint32("stream", st.StreamID()).Int("max_streams", e.cfg.MaxStreams).
					Msg("stream refused: session is at its stream limit (further refusals are counted in the session's closing line)")
			}
			e.met.streamRefused(e.noService, StatusBusy)
			go func() {
				defer running.Done()
				refuse(st, StatusBusy, fmt.Sprintf("exit is at its limit of %d streams per session", e.cfg.MaxStreams))
			}()
			continue
		}
		streams.Add(1)
		e.count.streams.Add(1)
		e.count.streamsTotal.Add(1)
		ended := func(svc *serviceCounters, s Status, msg string) {
			defer running.Done()
			defer mc.fins.forget(st.StreamID())
			// A refused stream no longer counts as served, nor holds up a drain.
			active.Add(-1)
			e.count.streams.Add(-1)
			streams.Done()
			if s != StatusOK {
				e.met.streamRefused(svc, s)
				refuse(st, s, msg)
			}
		}
		go e.serveStream(hard, log, st, mc, who, ended)
	}
	<-sess.CloseChan()
	endDrains()
	running.Wait()
	reason, clean := sessionEnd(sess, res.Conn)
	ev := log.Info()
	if !clean {
		ev = log.Warn() // truncation, a failed record, a reset, a keepalive timeout, a flood
	}
	ev.Err(reason).Int64("streams", total).Int64("streams_refused", refusedTotal.Load()).
		Str("duration", logDuration(time.Since(start))).Msg("session closed")
}

// streamPeer is what the exit knows of the entry that opened a stream.
type streamPeer struct {
	fingerprint string
	access      access // the rules in force when its session began
}

// serveStream reads the stream header, checks that the peer may reach the
// service it names, dials the service's backend, answers the status and
// starts forwarding; ended is called once the stream is done, from
// forward's goroutine. If it refuses the stream instead, it logs why and
// calls ended at once with the status and message to answer, and leaves st
// to ended. svc is the counters of the stream's service. ctx bounds the dial: it ends with the
// drain, not as the drain starts, so that a stream accepted before GoAway is
// served.
func (e *Exit) serveStream(ctx context.Context, log zerolog.Logger, st *yamux.Stream, mc *muxConn, peer streamPeer, ended func(svc *serviceCounters, s Status, msg string)) {
	svc := e.noService
	log = log.With().Uint32("stream", st.StreamID()).Logger()
	st.SetReadDeadline(time.Now().Add(e.cfg.HandshakeTimeout))
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
			msg = fmt.Sprintf("no complete stream header within %v", e.cfg.HandshakeTimeout)
		default:
			msg = fmt.Sprintf("reading the stream header: %v", err)
		}
		ended(e.refusal(svc, log, StatusRefused, msg, nil))
		return
	}
	if !validOrigin(hdr.origin) {
		log.Warn().Msgf("the entry claims origin %+q, which is neither empty nor ip:port", hdr.origin)
		ended(e.refusal(svc, log, StatusRefused, "bad stream header: the origin is neither empty nor ip:port", nil))
		return
	}
	if hdr.origin != "" {
		// What the entry says it saw; the exit cannot check it.
		log = log.With().Str("claimed_origin", hdr.origin).Logger()
	}
	// readStreamHeader let through printable ASCII only: safe to log.
	log = log.With().Str("service", config.DisplayName(hdr.service)).Logger()
	r := e.routes.byName[hdr.service]
	if r == nil {
		if l := e.local.get(hdr.service); l != nil {
			ended(e.serveLocal(ctx.Done(), log, st, mc, peer, hdr.origin, l))
			return
		}
		ended(e.refusal(svc, log, StatusUnknownService, unknownService(hdr.service, e.visible(peer)), nil))
		return
	}
	svc = r.count
	if !peer.access.allows(r.name, peer.fingerprint) {
		ended(e.refusal(svc, log, StatusRefused, policyRefusal(peer.fingerprint, r.display()), nil))
		return
	}
	svc.total.Add(1)
	svc.open.Add(1)
	served := ended // from here on, ending the stream also ends it in svc.open
	ended = func(svc *serviceCounters, s Status, msg string) {
		svc.open.Add(-1)
		served(svc, s, msg)
	}
	start := time.Now()
	c, err := e.dialer.DialContext(ctx, r.network, r.dialAddr)
	e.met.backendDial(time.Since(start), err)
	if err != nil {
		msg := fmt.Sprintf("backend %s unreachable: %v", r.addr, err)
		if r.name != "" {
			msg = fmt.Sprintf("service %q: %s", r.name, msg)
		}
		ended(e.refusal(svc, log, StatusUnreachable, msg, err))
		return
	}
	r.probe.accepted(time.Now())
	backend := c.(carriedConn)
	if r.proxyProtocol {
		if err := writeProxyHeader(backend, hdr.origin, peer.fingerprint, e.cfg.DialTimeout); err != nil {
			backend.Close()
			ended(e.refusal(svc, log, StatusUnreachable, fmt.Sprintf("backend %s: sending the PROXY protocol header: %v", r.addr, err), err))
			return
		}
	}
	if _, err := st.Write(marshalStatus(StatusOK, "")); err != nil {
		backend.Close()
		st.Close()
		log.Warn().Err(err).Msg("stream lost before the status was sent")
		ended(svc, StatusOK, "")
		return
	}
	forward(backend, st, mc, e.pool, e.writeStall, svc.moved, nil, nil, func(f flow) {
		e.met.streamEnded(svc, f)
		ev := log.Info()
		if f.aborted {
			ev = log.Warn().Bool("aborted", true)
		}
		if f.err != nil && !isClosed(f.err) {
			ev = ev.AnErr("reason", f.err)
		}
		ev.Int64("bytes_to_backend", f.fromStream).Int64("bytes_to_app", f.toStream).
			Str("duration", logDuration(time.Since(start))).Msg("stream closed")
		ended(svc, StatusOK, "")
	})
}

// unknownService is the message for a stream naming a service the exit
// does not have: it lists the services visible, those the peer may reach,
// and no other.
func unknownService(name string, visible []string) string {
	if len(visible) == 0 {
		return fmt.Sprintf("unknown service %q: this exit has no service for your key", config.DisplayName(name))
	}
	return fmt.Sprintf("unknown service %q: this exit has %s", config.DisplayName(name), strings.Join(visible, ", "))
}

// policyRefusal is the message for a stream the access rules refuse.
func policyRefusal(fp, service string) string {
	return fmt.Sprintf("key %s may not reach service %q: the exit's --allow rules do not list it", fp, service)
}

// writeProxyHeader sends backend the PROXY protocol v2 header of a stream
// from origin through the entry key fp (proxyproto.go), within timeout.
func writeProxyHeader(backend net.Conn, origin, fp string, timeout time.Duration) error {
	b, err := proxyHeader(origin, backend.RemoteAddr(), fp)
	if err != nil {
		return err
	}
	backend.SetWriteDeadline(time.Now().Add(timeout))
	_, err = backend.Write(b)
	backend.SetWriteDeadline(time.Time{})
	return err
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

// refusal logs that the stream of service svc is refused with s and msg,
// and returns them.
func (e *Exit) refusal(svc *serviceCounters, log zerolog.Logger, s Status, msg string, err error) (*serviceCounters, Status, string) {
	log.Warn().Int("status", int(s)).Str("status_text", s.String()).AnErr("reason", err).Msg(msg)
	return svc, s, msg
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
func (e *Exit) drainRefused(ctx context.Context, st *yamux.Stream, s Status, msg string) {
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	defer stop()
	st.SetWriteDeadline(time.Now().Add(time.Second))
	st.Write(marshalStatus(s, msg))
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
