package tunnel

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/handshake"
)

// Reaching an exit, and failing over between several. Settings.Peers lists
// them, in order of preference; a
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

// pins reports whether the key with fingerprint fp is pinned for the exit
// at peer.
func (p *pins) pins(peer, fp string) bool {
	cfg := p.forExit(peer)
	if cfg.PeerKeys != nil {
		return slices.Contains(cfg.PeerKeys.Fingerprints(), fp)
	}
	return cfg.PeerKey != nil && handshake.Fingerprint(cfg.PeerKey) == fp
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
func (e *Entry) establish(ctx context.Context, r *redial) *entrySession {
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
			e.books.made.Add(1)
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
			// An exit not up yet (a refused dial at start) is expected for a while: warn;
			// a refused handshake, or an exit away for a minute, is an error.
			ev := e.log.Error()
			if kind == failedDial && now.Sub(r.firstFail) < time.Minute {
				ev = e.log.Warn()
			}
			ev.Err(err).Strs("peers", e.peers).Int("failed_attempts", r.unlogged).
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
func (e *Entry) reach(ctx context.Context, log zerolog.Logger, exits []exitAddr) (*entrySession, []error) {
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
