package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
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
	// PeerKeys, when set, are the exit's keys, any of which it may present
	// (two while its key is rotated); PeerKey is then unused.
	PeerKeys *handshake.KeySet
	// ExitKeys are the pinned keys of the exits that have their own (a
	// peer given as HOST:PORT=KEYS), by address (HOST:PORT); any other
	// exit may present any of PeerKey or PeerKeys.
	ExitKeys map[string]*handshake.KeySet
	Version  string // this build's, for the build-info metric
}

// Several exits. Settings.Peers lists them, in order of preference; a
// name stands for every address it resolves to, looked up again for every
// attempt. The entry keeps one session, to one exit. An attempt to reach
// one tries every address in turn, starting after the one whose session
// just ended (so a dead or draining exit is tried last), and the first
// handshake that succeeds wins; a failed TCP dial moves on at once. The
// entry does not move back to an exit it left while its session lives.

// exitAddr is one address of an exit, for one attempt.
type exitAddr struct {
	peer string // as configured (HOST:PORT): names the exit in logs, and its pinned keys
	addr string // IP:PORT
}

// pins are the entry's own key and the exits' keys it pins, swapped
// together by Reload.
type pins struct {
	hs    *handshake.Config            // the entry's key; the keys of exits without their own
	exits map[string]*handshake.KeySet // by peer address: an exit's own keys
}

// forExit returns the handshake settings for an exit at peer.
func (p *pins) forExit(peer string) *handshake.Config {
	ks, ok := p.exits[peer]
	if !ok {
		return p.hs
	}
	cfg := *p.hs
	cfg.PeerKey, cfg.PeerKeys = nil, ks
	return &cfg
}

// Reconnection. After a failed attempt to reach the exit, or a session
// that died younger than stableSession, the entry waits before the next
// attempt: exponential from minBackoff to maxBackoff, with jitter, and
// back to minBackoff once a session has lived stableSession. A failed TCP
// dial is cheap for both sides: its wait is at most maxDialWait, and an
// application waiting for a session cuts it short, so that a restarted
// exit is used as soon as it listens again; attempts are never closer than
// minBackoff. A failed handshake costs both sides RSA work: its wait is
// always honoured. Failures are logged once, then about once per backoff
// step, however often the dial is retried.
const (
	minBackoff    = 100 * time.Millisecond
	maxBackoff    = 30 * time.Second
	maxDialWait   = 2 * time.Second
	stableSession = 10 * time.Second
)

// maxSessionStreams is how many streams the entry opens on one session
// before it replaces the session. yamux v0.1.2 keeps an entry in its
// session's inflight map for every stream whose FIN reaches the exit before
// the exit accepts it (the exit then never sends the ACK that would delete
// it), until the session ends: hashicorp/yamux issue #148, a few bytes per
// application connection. A replacement is made first and takes the new
// streams; the old session ends once its last stream has (a long-lived
// connection keeps its session, and that session's map, until it ends).
// 1<<15 streams keep the map under about 300 KB, at the cost of one
// handshake per 32768 connections.
const maxSessionStreams = 1 << 15

// session is one authenticated session with an exit.
type session struct {
	exit        exitAddr
	fingerprint string // the exit's key, as the handshake proved it
	mux         *yamux.Session
	conn        *frame.Conn // the record layer under mux
	mc          *muxConn

	opened   atomic.Int64  // streams opened on it
	full     chan struct{} // closed when opened reaches the entry's recycleAfter
	opening  atomic.Int64  // OpenStream calls in progress
	retiring atomic.Bool   // a newer session takes the new streams
}

// errRetiring: a session being retired opens no more streams.
var errRetiring = errors.New("tunnel: session is being replaced")

// open opens a stream unless s is retiring. Together with retire it makes
// sure no stream is opened on a session after it was found idle and closed:
// open counts itself in opening before it checks retiring, retire sets
// retiring before it checks opening.
func (s *session) open() (*yamux.Stream, error) {
	s.opening.Add(1)
	defer s.opening.Add(-1)
	if s.retiring.Load() {
		return nil, errRetiring
	}
	return s.mux.OpenStream()
}

// Entry accepts application connections and carries each as a stream of
// one long-lived, authenticated session to the exit.
type Entry struct {
	cfg        config.Entry
	peers      []string             // the exits' addresses (HOST:PORT), from cfg.Peers
	keys       atomic.Pointer[pins] // swapped by Reload
	lookup     func(ctx context.Context, host string) ([]string, error)
	dial       func(ctx context.Context, addr string) (net.Conn, error) // dialTCP; tests replace it
	log        zerolog.Logger
	pool       *bufPool
	writeStall time.Duration
	count      counters
	met        *metricSet
	// recycleAfter is maxSessionStreams; tests make it small.
	recycleAfter int64

	kick    chan struct{}            // an application waits: retry now (buffered, 1)
	running atomic.Pointer[entryRun] // while Run or ServeListeners runs (dial.go)

	mu      sync.Mutex
	cur     *session      // nil while there is none
	changed chan struct{} // closed, and replaced, whenever cur or lastErr changes
	lastErr error         // why the last attempt to reach the exit failed
}

// NewEntry checks cfg and returns an entry agent. It starts nothing.
func NewEntry(cfg EntryConfig, log zerolog.Logger) (*Entry, error) {
	if cfg.Key == nil {
		return nil, errors.New("tunnel: entry needs its private key")
	}
	var peers []string
	for _, spec := range cfg.Settings.Peers {
		addr, _ := config.ParsePeer(spec)
		if cfg.PeerKey == nil && cfg.PeerKeys == nil && cfg.ExitKeys[addr] == nil {
			return nil, fmt.Errorf("tunnel: entry needs the public keys of the exit at %s", addr)
		}
		peers = append(peers, addr)
	}
	if len(peers) == 0 {
		return nil, errors.New("tunnel: entry needs at least one exit")
	}
	n := &Entry{
		cfg:          cfg.Settings,
		peers:        peers,
		lookup:       net.DefaultResolver.LookupHost,
		log:          log.With().Str("role", "entry").Logger(),
		pool:         newBufPool(),
		writeStall:   defaultWriteStall,
		recycleAfter: maxSessionStreams,
		kick:         make(chan struct{}, 1),
		changed:      make(chan struct{}),
	}
	n.dial = n.dialTCP
	n.keys.Store(&pins{
		hs: &handshake.Config{
			PrivateKey: cfg.Key,
			PeerKey:    cfg.PeerKey,
			PeerKeys:   cfg.PeerKeys,
			Timeout:    cfg.Settings.HandshakeTimeout,
		},
		exits: cfg.ExitKeys,
	})
	n.met = newMetrics("entry", cfg.Version, &n.count)
	return n, nil
}

// Stats returns the entry's counters, with the record counts of the
// current session.
func (e *Entry) Stats() Stats {
	st := e.count.stats("entry")
	if c := e.currentConn(); c != nil {
		rs := c.Stats()
		st.RecordsSent, st.RecordsReceived = rs.RecordsSent, rs.RecordsReceived
	}
	st.Services = e.met.serviceStats()
	return st
}

// fingerprint is the fingerprint of the entry's own key, the one its next
// handshake uses.
func (e *Entry) fingerprint() string {
	return handshake.Fingerprint(&e.keys.Load().hs.PrivateKey.PublicKey)
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

// ServiceListener is a listener whose application connections go to one
// service of the exit.
type ServiceListener struct {
	Listener net.Listener
	Service  string // as on the wire: "" for the exit's default service
}

// Serve accepts applications on ln, for the exit's default service, until
// ctx is done; see ServeListeners.
func (e *Entry) Serve(ctx context.Context, ln net.Listener) error {
	return e.ServeListeners(ctx, []ServiceListener{{Listener: ln}})
}

// ServeListeners accepts applications on every listener of lns, each for
// its service, until ctx is done, then stops accepting, lets open
// connections (and those of DialContext) finish for up to the drain
// timeout, closes everything and returns. Every service's streams share the
// one session. It closes the listeners. With no listener it is Run.
func (e *Entry) ServeListeners(ctx context.Context, lns []ServiceListener) error {
	run, endRun, err := e.beginRun(ctx)
	if err != nil {
		return err
	}
	defer endRun()
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

	// One accept loop per listener; the first that fails stops them all.
	acceptCtx, stopAccepting := context.WithCancel(ctx)
	defer stopAccepting()
	var accepting sync.WaitGroup
	var acceptErrOnce sync.Once
	var acceptErr error
	for _, l := range lns {
		svc := e.met.service(config.DisplayName(l.Service))
		stop := context.AfterFunc(acceptCtx, func() { l.Listener.Close() })
		defer stop()
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			for {
				c, err := l.Listener.Accept()
				if err != nil {
					if ctx.Err() == nil && !isClosed(err) {
						acceptErrOnce.Do(func() { acceptErr = fmt.Errorf("tunnel: accept: %w", err) })
					}
					stopAccepting()
					return
				}
				conns.Add(1)
				go e.serveApp(hard, c.(carriedConn), l.Service, svc, conns.Done)
			}
		}()
	}
	accepting.Wait()
	if len(lns) == 0 {
		<-ctx.Done() // Run: the session serves DialContext until then
	}

	drained := make(chan struct{})
	go func() { conns.Wait(); close(drained) }()
	if acceptErr == nil {
		e.log.Info().Str("drain_timeout", logDuration(e.cfg.DrainTimeout)).Msg("shutting down: draining open connections")
		deadline := time.NewTimer(e.cfg.DrainTimeout)
		defer deadline.Stop()
	drain:
		for _, ch := range []<-chan struct{}{drained, run.dialed.drained()} {
			select {
			case <-ch:
			case <-deadline.C:
				e.log.Warn().Msg("drain timeout: closing the connections still open")
				break drain
			}
		}
	}
	stopAll()
	<-drained
	wg.Wait()
	return acceptErr
}

// maintain keeps one session to the exit up while ctx lives, reconnecting
// with backoff. A session lives until hard ends, so that draining
// connections keep it. A session is retired, left to finish its streams
// while new ones go to the next session, when the exit sends GoAway (it is
// shutting down; the next session is made at once) and when it has carried
// recycleAfter streams (the next session is made first).
func (e *Entry) maintain(ctx, hard context.Context) {
	var retiring sync.WaitGroup
	defer retiring.Wait()
	handOver := func(s *session) {
		retiring.Add(1)
		go func() {
			defer retiring.Done()
			e.retire(s, hard)
			e.count.sessions.Add(-1)
		}()
	}
	r := redial{backoff: minBackoff}
	for ctx.Err() == nil {
		s := e.establish(ctx, &r)
		if s == nil {
			return
		}
		born := time.Now()
		full := s.full             // closed when s has carried recycleAfter streams
		var retry <-chan time.Time // a failed replacement is tried again
	watch:
		for {
			select {
			case <-s.mc.goAway:
				e.clearSession(s, errors.New("the exit is going away"))
				e.log.Info().Str("peer", s.exit.peer).Str("addr", s.exit.addr).
					Msg("the exit is shutting this session down; its open streams may finish, new ones go to a new session")
				handOver(s)
				r.reset()
				r.left, r.leftWhy = s.exit, "the exit is going away (GoAway)"
				break watch
			case <-full:
			case <-retry:
			case <-s.mux.CloseChan():
				e.count.sessions.Add(-1)
				reason, _ := sessionEnd(s.mux, s.conn)
				e.clearSession(s, fmt.Errorf("session lost: %v", reason))
				if ctx.Err() != nil {
					return
				}
				lived := time.Since(born)
				r.left, r.leftWhy = s.exit, fmt.Sprintf("session lost: %v", reason)
				ev := e.log.Warn().Err(reason).Str("peer", s.exit.peer).Str("addr", s.exit.addr).
					Str("duration", logDuration(lived))
				if lived >= stableSession {
					r.reset()
					ev.Msg("session with the exit lost; reconnecting")
					break watch
				}
				if r.choices > 1 && r.youngLosses == 0 {
					// Another exit is tried first, at once; a second
					// young loss in a row backs off.
					r.youngLosses++
					ev.Msg("session with the exit lost; reconnecting")
					break watch
				}
				wait := r.step() // it died young: back off
				ev.Str("retry_in", logDuration(wait)).Msg("session with the exit lost; reconnecting")
				if !sleep(ctx, wait, nil) {
					return
				}
				break watch
			case <-ctx.Done():
				e.clearSession(s, errors.New("entry is shutting down"))
				e.hold(s, hard)
				e.count.sessions.Add(-1)
				return
			}
			// s has carried its share of streams: replace it, keeping it
			// current until the replacement is up.
			full, retry = nil, nil
			e.log.Info().Int64("streams", s.opened.Load()).
				Str("reason", "yamux keeps a few bytes per stream until its session ends (hashicorp/yamux#148)").
				Msg("replacing the session after its share of streams; its open connections stay on it")
			next, err := e.connect(ctx, e.log, s.exit)
			if err != nil {
				if ctx.Err() == nil {
					e.countFailure(err)
					wait := r.step()
					e.log.Warn().Err(err).Str("retry_in", logDuration(wait)).
						Msg("cannot establish a replacement session; the current one stays in use")
					retry = time.After(wait)
				}
				continue
			}
			e.setSession(next)
			e.count.sessions.Add(1)
			e.count.recycled.Add(1)
			handOver(s)
			s, born, full = next, time.Now(), next.full
		}
	}
}

// redial paces the attempts to reach the exit, and their log lines.
type redial struct {
	backoff time.Duration // the base of the next wait
	last    time.Time     // when the last attempt started

	failures  int       // attempts failed since the last session
	firstFail time.Time // when the first of them failed
	logged    string    // the failure last logged (see establish)
	nextLog   time.Time // no line for the same failure before this
	unlogged  int       // failures since the last line

	choices     int      // addresses of exits the last attempt had
	left        exitAddr // the exit whose session just ended: tried last
	leftWhy     string   // why it ended
	youngLosses int      // sessions lost young in a row, not backed off
}

// reset starts the backoff over: a session proved stable, or the exit
// said it was going away.
func (r *redial) reset() { r.backoff, r.youngLosses = minBackoff, 0 }

// step returns the next wait, with jitter, and doubles the backoff.
func (r *redial) step() time.Duration {
	w := r.backoff/2 + rand.N(r.backoff)
	r.backoff = min(2*r.backoff, maxBackoff)
	return w
}

// establish reaches an exit (see exitAddr) until a session is up, which
// it makes current and returns, or ctx ends (nil).
func (e *Entry) establish(ctx context.Context, r *redial) *session {
	for {
		if !sleep(ctx, minBackoff-time.Since(r.last), nil) {
			return nil
		}
		r.last = time.Now()
		log := e.log
		if r.failures > 0 {
			log = log.With().Int("failed_attempts", r.failures).
				Str("failing_for", logDuration(time.Since(r.firstFail))).Logger()
		}
		exits, errs := e.resolve(ctx)
		exits = rotateAfter(exits, r.left.addr)
		r.choices = len(exits)
		s, failed := e.reach(ctx, log, exits)
		errs = append(errs, failed...)
		if s != nil {
			if r.left.addr != "" && r.left.addr != s.exit.addr {
				e.log.Info().Str("peer", s.exit.peer).Str("addr", s.exit.addr).
					Str("previous_peer", r.left.peer).Str("previous_addr", r.left.addr).
					Str("reason", r.leftWhy).AnErr("skipped", attemptsError(errs).orNil()).
					Msg("failed over to another exit")
			}
			r.failures, r.logged, r.left = 0, "", exitAddr{}
			e.setSession(s)
			e.count.sessions.Add(1)
			e.met.connected.Add(1)
			return s
		}
		if ctx.Err() != nil {
			return nil
		}
		var err error = attemptsError(errs)
		if len(errs) == 1 {
			err = errs[0].(*exitError).err // one exit: its error, as it is
		}
		kind := failure(0)
		for _, xe := range errs {
			kind = max(kind, e.countFailure(xe))
		}
		e.setFailure(err)
		now := time.Now()
		if r.failures == 0 {
			r.firstFail = now
		}
		r.failures++
		r.unlogged++
		logStep := r.backoff
		wait := r.step()
		var wake <-chan struct{}
		if kind == failedDial {
			wait = min(wait, maxDialWait)
			wake = e.kick // an application waits: the dial is cheap, retry now
		}
		// Same failure: the same kind, and for a refusal the same words
		// (other messages carry the local port, new on every attempt).
		same := fmt.Sprint(kind)
		if kind == failedRejected {
			same += err.Error()
		}
		if same != r.logged || !now.Before(r.nextLog) {
			e.log.Error().Err(err).Strs("peers", e.peers).Int("failed_attempts", r.unlogged).
				Str("failing_for", logDuration(now.Sub(r.firstFail))).
				Str("retry_in", logDuration(wait)).
				Msg("cannot establish a session with the exit")
			r.logged, r.nextLog, r.unlogged = same, now.Add(max(wait, logStep)), 0
		}
		if !sleep(ctx, wait, wake) {
			return nil
		}
	}
}

// dialStagger is how long the entry waits for a TCP dial to an exit to
// connect before it dials the next one as well.
const dialStagger = 250 * time.Millisecond

// dialed is the outcome of a dial to an exit.
type dialed struct {
	exit exitAddr
	conn net.Conn
	err  error
}

// reach tries exits in order until a handshake succeeds, and returns the
// session, with the failures before it (*exitErrors). The dials overlap:
// the next exit is dialed when the dial before has failed or has not
// connected within dialStagger, so an exit that does not answer at all
// delays the others by dialStagger, not by the dial timeout. No dial
// starts while a handshake runs; a handshake that fails lets the next
// exit be dialed at once. The dials that remain are abandoned, and the
// connections they make closed, once a session is up.
func (e *Entry) reach(ctx context.Context, log zerolog.Logger, exits []exitAddr) (*session, []error) {
	var errs []error
	if len(exits) == 0 {
		return nil, nil
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan dialed, len(exits))
	next, pending := 0, 0
	var stagger *time.Timer
	var staggered <-chan time.Time
	start := func() {
		x := exits[next]
		next, pending = next+1, pending+1
		go func() {
			c, err := e.dial(dctx, x.addr)
			results <- dialed{x, c, err}
		}()
		if stagger != nil {
			stagger.Stop()
		}
		staggered = nil
		if next < len(exits) {
			stagger = time.NewTimer(dialStagger)
			staggered = stagger.C
		}
	}
	defer func() {
		if stagger != nil {
			stagger.Stop()
		}
		cancel()
		go func(pending int) { // close what the abandoned dials connect
			for ; pending > 0; pending-- {
				if r := <-results; r.conn != nil {
					r.conn.Close()
				}
			}
		}(pending)
	}()
	start()
	for pending > 0 {
		select {
		case <-staggered:
			start()
			continue
		case <-ctx.Done():
			return nil, errs
		case r := <-results:
			pending--
			if r.err == nil {
				if stagger != nil {
					stagger.Stop()
				}
				staggered = nil
				s, err := e.start(ctx, log, r.exit, r.conn)
				if err == nil {
					return s, errs
				}
				r.err = err
			} else {
				r.err = &dialError{r.err}
			}
			if ctx.Err() != nil {
				return nil, errs
			}
			errs = append(errs, &exitError{r.exit, r.err})
			if next < len(exits) {
				start()
			}
		}
	}
	return nil, errs
}

// resolve returns the addresses of the exits in the order of Peers, a name
// looked up again, and a failure to resolve one (an *exitError).
func (e *Entry) resolve(ctx context.Context) ([]exitAddr, []error) {
	var exits []exitAddr
	var errs []error
	seen := map[string]bool{}
	add := func(x exitAddr) {
		if !seen[x.addr] {
			seen[x.addr] = true
			exits = append(exits, x)
		}
	}
	for _, peer := range e.peers {
		host, port, err := net.SplitHostPort(peer)
		if err != nil { // Validate has seen it
			errs = append(errs, &exitError{exitAddr{peer, peer}, &dialError{err}})
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			add(exitAddr{peer, peer})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
		ips, err := e.lookup(lctx, host)
		cancel()
		if err == nil && len(ips) == 0 {
			err = fmt.Errorf("%s has no address", host)
		}
		if err != nil {
			errs = append(errs, &exitError{exitAddr{peer, peer}, &dialError{err}})
			continue
		}
		for _, ip := range ips {
			add(exitAddr{peer, net.JoinHostPort(ip, port)})
		}
	}
	return exits, errs
}

// rotateAfter returns exits starting after the one at addr, which comes
// last; exits as they are if none is at addr.
func rotateAfter(exits []exitAddr, addr string) []exitAddr {
	for i, x := range exits {
		if x.addr == addr {
			return append(exits[i+1:], exits[:i+1]...)
		}
	}
	return exits
}

// exitError is a failed attempt to reach one exit.
type exitError struct {
	exit exitAddr
	err  error
}

func (e *exitError) Error() string { return e.exit.addr + ": " + e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// attemptsError is what failed in one attempt on every exit: *exitErrors.
type attemptsError []error

func (a attemptsError) Error() string {
	msgs := make([]string, len(a))
	for i, err := range a {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (a attemptsError) Unwrap() []error { return a }

// orNil returns a, or nil when it holds nothing.
func (a attemptsError) orNil() error {
	if len(a) == 0 {
		return nil
	}
	return a
}

// failure is why an attempt to reach the exit failed.
type failure int

const (
	failedDial     failure = iota + 1 // the TCP dial
	failedTimeout                     // the handshake ran out of time
	failedRejected                    // either side refused the handshake
	failedOther                       // the handshake failed otherwise (e.g. cut)
)

// countFailure counts a failed attempt to reach the exit by its cause,
// which it returns.
func (e *Entry) countFailure(err error) failure {
	if de := (*dialError)(nil); errors.As(err, &de) {
		e.count.dialFailures.Add(1)
		return failedDial
	}
	e.count.hsFailures.Add(1)
	e.met.handshakeFailed(err, true)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		e.count.hsTimeouts.Add(1)
		return failedTimeout
	case rejected(err):
		e.count.hsRejections.Add(1)
		return failedRejected
	}
	return failedOther
}

// dialError is a failed TCP dial to the exit.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// rejected reports a handshake that one side refused: the exit's ALERT, or
// a check of the exit's messages that failed here.
func rejected(err error) bool {
	for _, target := range []error{
		handshake.ErrNotTunnel, handshake.ErrProtocol, handshake.ErrUnsupportedVersion,
		handshake.ErrNoCommonSuite, handshake.ErrUnknownKey, handshake.ErrBadSignature,
		handshake.ErrDecrypt, handshake.ErrInternal, handshake.ErrBusy,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var alert *handshake.AlertError
	return errors.As(err, &alert)
}

// hold waits for s to close, closing it when hard ends.
func (e *Entry) hold(s *session, hard context.Context) {
	select {
	case <-s.mux.CloseChan():
	case <-hard.Done():
		s.mux.Close()
	}
}

// retirePoll is how often a retiring session is checked for open streams.
const retirePoll = 100 * time.Millisecond

// retire stops s from opening streams, and closes it once its last stream
// is done (or when hard ends). The entry, as the yamux client, ends a
// session the exit sent GoAway on: if the exit closed it instead, the close
// could overtake the FINs yamux has queued but not yet sent, and the entry
// would take complete streams for cut ones.
func (e *Entry) retire(s *session, hard context.Context) {
	s.retiring.Store(true)
	t := time.NewTicker(retirePoll)
	defer t.Stop()
	for {
		select {
		case <-s.mux.CloseChan():
			if reason, clean := sessionEnd(s.mux, s.conn); !clean {
				e.log.Warn().Err(reason).Msg("a session finishing its streams was lost")
			}
			return
		case <-hard.Done():
			s.mux.Close()
			return
		case <-t.C:
			if s.opening.Load() == 0 && s.mux.NumStreams() == 0 {
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

// connect dials the exit at x, runs the handshake and starts the
// multiplexer; it logs the new session to log.
func (e *Entry) connect(ctx context.Context, log zerolog.Logger, x exitAddr) (*session, error) {
	c, err := e.dial(ctx, x.addr)
	if err != nil {
		return nil, &dialError{err}
	}
	return e.start(ctx, log, x, c)
}

// dialTCP is Entry.dial: a TCP dial to an exit, within the dial timeout.
func (e *Entry) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: e.cfg.DialTimeout, KeepAlive: e.cfg.KeepAlive}
	return d.DialContext(ctx, "tcp", addr)
}

// start runs the handshake on c, connected to the exit at x, and starts
// the multiplexer; it logs the new session to log.
func (e *Entry) start(ctx context.Context, log zerolog.Logger, x exitAddr, c net.Conn) (*session, error) {
	res, err := handshake.Initiate(ctx, withRawIO(c), e.keys.Load().forExit(x.peer))
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
	e.met.sessionUp(mux, res.Conn, res.PeerFingerprint, res.Duration)
	log.Info().Str("peer", x.peer).Str("addr", x.addr).Str("peer_fingerprint", res.PeerFingerprint).
		Str("handshake", logDuration(res.Duration)).Msg("session established")
	return &session{exit: x, fingerprint: res.PeerFingerprint, mux: mux, conn: res.Conn, mc: mc, full: make(chan struct{})}, nil
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
// rejected our key, or is not the exit we pin, or not a tunnel agent; for
// several exits, that is so of every one.
func lasting(err error) bool {
	if a := (attemptsError)(nil); errors.As(err, &a) {
		for _, err := range a {
			if !lasting(err) {
				return false
			}
		}
		return len(a) > 0
	}
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
		if s != nil && !s.mux.IsClosed() && !s.retiring.Load() {
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
// just shutting down refuses it; then it tries the next session once. A
// session just replaced refuses it too; its replacement is current already.
func (e *Entry) openStream(ctx context.Context) (*session, *yamux.Stream, error) {
	goneAway := false
	for {
		s, err := e.session(ctx)
		if err != nil {
			return nil, nil, err
		}
		st, err := s.open()
		switch {
		case err == nil:
			if s.opened.Add(1) == e.recycleAfter {
				close(s.full)
			}
			return s, st, nil
		case errors.Is(err, errRetiring):
		case errors.Is(err, yamux.ErrRemoteGoAway) && !goneAway:
			goneAway = true
			e.clearSession(s, err)
		default:
			return nil, nil, err
		}
	}
}

// maxCarries bounds how often one application connection is offered to
// an exit: a stream refused before it was accepted (see unacked) is carried
// again on the next session.
const maxCarries = 3

// appConn is one application connection the entry carries.
type appConn struct {
	conn    carriedConn
	log     zerolog.Logger
	origin  string
	service string // the wire name
	svc     *serviceCounters
	sent    unacked // what the application sent while no exit had accepted it
	carries int     // streams offered so far
	ended   func()  // the caller's, once the connection is done
}

// serveApp carries one application connection as a stream to service (the
// wire name), whose counters are svc, and calls ended when it is done. It
// returns once the forwarding has started; the connection's goroutines are
// forward's. When the exit resets the stream without accepting it (it is
// going away, and the stream crossed its GoAway), the connection is carried
// on the next session, with what the application sent so far: no byte
// reached a backend, and the application notices nothing.
func (e *Entry) serveApp(ctx context.Context, app carriedConn, service string, svc *serviceCounters, ended func()) {
	a := &appConn{conn: app, origin: appOrigin(app), service: service, svc: svc, ended: ended}
	lc := e.log.With().Str("service", config.DisplayName(service))
	if a.origin != "" {
		lc = lc.Str("origin", a.origin)
	}
	a.log = lc.Logger()
	svc.open.Add(1)
	svc.total.Add(1)
	e.carry(ctx, a)
}

// carried is what follows a stream of a that ended with f and the exit's
// status: a stream that was not accepted is offered again, up to
// maxCarries in all; anything else ends a.
func (e *Entry) carried(ctx context.Context, a *appConn, f flow, status Status) {
	if f.notAccepted && !a.sent.done.Load() && a.carries < maxCarries {
		a.log.Info().Int("bytes", len(a.sent.buf)).
			Msg("the exit refused the stream before accepting it (it is going away); carrying the connection on the next session")
		e.carry(ctx, a)
		return
	}
	if f.notAccepted {
		a.log.Warn().Int("attempts", a.carries).
			Msg("closing application connection: every exit tried refused the stream before accepting it")
		f.aborted = true
		resetConn(a.conn)
	}
	e.met.streamDone(a.svc, status, f)
	a.end()
}

// end: a is done.
func (a *appConn) end() {
	a.svc.open.Add(-1)
	a.ended()
}

// appOrigin is the origin of app's streams (PROTOCOL.md section 4): its
// address "ip:port" over TCP; empty over a UNIX socket, whose peer has no
// address of that form (and usually no name at all).
func appOrigin(app carriedConn) string {
	if a, ok := app.RemoteAddr().(*net.TCPAddr); ok {
		return a.String()
	}
	return ""
}

// carry opens a stream to a's service, sends the header and what a.sent
// holds, and starts forwarding, which ends in carried. When it cannot, it
// closes a's connection, logs and counts why, and ends a.
func (e *Entry) carry(ctx context.Context, a *appConn) {
	a.carries++
	s, st, err := e.openStream(ctx)
	if err != nil {
		a.log.Warn().Err(err).Msg("closing application connection: no session with the exit")
		e.met.streamNoSession(a.svc)
		resetConn(a.conn)
		a.end()
		return
	}
	id := st.StreamID()
	log := a.log.With().Str("peer", s.exit.peer).Uint32("stream", id).Logger()
	e.count.streams.Add(1)
	e.count.streamsTotal.Add(1)
	start := time.Now()
	// The header goes out at once; application bytes follow without waiting
	// for the exit's status.
	if _, err := st.Write(append(streamHeader{service: a.service, origin: a.origin}.marshal(), a.sent.buf...)); err != nil {
		log.Warn().Err(err).Msg("closing application connection: stream lost")
		resetConn(a.conn)
		st.Close()
		s.mc.fins.forget(id)
		e.count.streams.Add(-1)
		a.end()
		return
	}
	resent := int64(len(a.sent.buf))
	var (
		status Status
		msg    string
	)
	awaitStatus := func() error {
		var err error
		status, msg, err = readStatus(st)
		if err != nil {
			return fmt.Errorf("no status from the exit: %w", err)
		}
		if status != StatusOK {
			return fmt.Errorf("exit refused the stream (%s): %s", status, msg)
		}
		return nil
	}
	forward(a.conn, st, s.mc, e.pool, e.writeStall, a.svc.moved, awaitStatus, &a.sent, func(f flow) {
		s.mc.fins.forget(id)
		e.count.streams.Add(-1)
		if !f.notAccepted {
			f.toStream += resent
			e.logCarried(log, f, status, time.Since(start))
		}
		e.carried(ctx, a, f, status)
	})
}

// logCarried logs the end of a stream that the exit accepted, or refused
// with status.
func (e *Entry) logCarried(log zerolog.Logger, f flow, status Status, d time.Duration) {
	ev := log.Info()
	if f.aborted || status != StatusOK {
		ev = log.Warn().Bool("aborted", true)
	}
	if status == StatusRefused {
		// Which key the exit refused, for the operator who grants access.
		ev = ev.Str("fingerprint", e.fingerprint())
	}
	if f.err != nil && !isClosed(f.err) {
		ev = ev.AnErr("reason", f.err)
	}
	if status != StatusOK {
		ev = ev.Int("status", int(status))
	}
	ev.Int64("bytes_to_backend", f.toStream).Int64("bytes_to_app", f.fromStream).
		Str("duration", logDuration(d)).Msg("connection closed")
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
