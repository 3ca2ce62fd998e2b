package keeper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/exits"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
)

// Reaching an exit, and failing over between several. Config.Peers lists
// them, in order of preference; a
// name stands for every address it resolves to, looked up again for every
// attempt. The entry keeps one session, to one exit. An attempt to reach
// one tries every address in turn, starting after the one whose session
// just ended (so a dead or draining exit is tried last), and the first
// handshake that succeeds wins; a failed TCP dial moves on at once. The
// entry does not move back to an exit it left while its session lives.

// Pins are the entry's own key and the exits' keys it pins, swapped
// together by Reload. Read-only once the keeper has them.
type Pins struct {
	Handshake *handshake.Config            // the entry's key; the keys of exits without their own
	Exits     map[string]*handshake.KeySet // by peer address: an exit's own keys
}

// pinned reports whether the key with fingerprint fp is pinned for the exit
// at peer.
func (p *Pins) pinned(peer, fp string) bool {
	cfg := p.ForExit(peer)
	if cfg.PeerKeys != nil {
		return slices.Contains(cfg.PeerKeys.Fingerprints(), fp)
	}
	return cfg.PeerKey != nil && handshake.Fingerprint(cfg.PeerKey) == fp
}

// ForExit returns the handshake settings for an exit at peer.
func (p *Pins) ForExit(peer string) *handshake.Config {
	ks, ok := p.Exits[peer]
	if !ok {
		return p.Handshake
	}
	cfg := *p.Handshake
	cfg.PeerKey, cfg.PeerKeys = nil, ks
	return &cfg
}

// Reconnection. After a failed attempt to reach the exit, or a session
// that died younger than stableSession, the entry waits before the next
// attempt: exponential from minBackoff to maxBackoff, with jitter, and
// back to minBackoff once a session has lived stableSession. A failed TCP
// dial is cheap for both sides: its wait is at most MaxDialWait, and an
// application waiting for a session cuts it short, so that a restarted
// exit is used as soon as it listens again; attempts are never closer than
// minBackoff. A failed handshake costs both sides RSA work: its wait is
// always honoured. Failures are logged once, then about once per backoff
// step, however often the dial is retried.
const (
	minBackoff    = 100 * time.Millisecond
	maxBackoff    = 30 * time.Second
	MaxDialWait   = 2 * time.Second
	stableSession = 10 * time.Second
)

// redial paces the attempts to reach the exit, and their log lines. One
// lives as long as Maintain runs.
type redial struct {
	log   zerolog.Logger // the keeper's
	peers []string       // the exits, for the log

	backoff time.Duration // the base of the next wait
	last    time.Time     // when the last attempt started

	failures  int       // attempts failed since the last session
	firstFail time.Time // when the first of them failed
	logged    string    // the failure last logged (see failed)
	nextLog   time.Time // no line for the same failure before this
	unlogged  int       // failures since the last line

	choices     int        // addresses of exits the last attempt had
	left        exits.Addr // the exit whose session just ended: tried last
	leftWhy     string     // why it ended
	youngLosses int        // sessions lost young in a row, not backed off
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

// attemptLog is the log of the next attempt: with the failures so far.
func (r *redial) attemptLog() zerolog.Logger {
	if r.failures == 0 {
		return r.log
	}
	return r.log.With().Int("failed_attempts", r.failures).
		Str("failing_for", logfield.Duration(time.Since(r.firstFail))).Logger()
}

// failed records an attempt that failed with err, the worst of whose
// causes was kind, and returns the wait before the next attempt. It logs
// the failure, unless it logged the same one less than a backoff step ago.
func (r *redial) failed(kind failure, err error) time.Duration {
	now := time.Now()
	if r.failures == 0 {
		r.firstFail = now
	}
	r.failures++
	r.unlogged++
	logStep := r.backoff
	wait := r.step()
	if kind == failedDial {
		wait = min(wait, MaxDialWait)
	}
	// Same failure: the same kind, and for a refusal the same words
	// (other messages carry the local port, new on every attempt).
	same := fmt.Sprint(kind)
	if kind == failedRejected {
		same += err.Error()
	}
	if same != r.logged || !now.Before(r.nextLog) {
		// An exit not up yet (a refused dial at start) is expected for a
		// while: warn; a refused handshake, or an exit away for a minute,
		// is an error.
		ev := r.log.Error()
		if kind == failedDial && now.Sub(r.firstFail) < time.Minute {
			ev = r.log.Warn()
		}
		ev.Err(err).Strs("peers", r.peers).Int("failed_attempts", r.unlogged).
			Str("failing_for", logfield.Duration(now.Sub(r.firstFail))).
			Str("retry_in", logfield.Duration(wait)).
			Msg("cannot establish a session with the exit")
		r.logged, r.nextLog, r.unlogged = same, now.Add(max(wait, logStep)), 0
	}
	return wait
}

// lost records that the session with the exit at x ended, for reason,
// after it lived for lived; it logs that, and returns the wait before the
// next attempt: none after a stable session, nor after the first of young
// losses in a row while there is another exit to try.
func (r *redial) lost(x exits.Addr, reason error, lived time.Duration) time.Duration {
	r.left, r.leftWhy = x, fmt.Sprintf("session lost: %v", reason)
	ev := r.log.Warn().Err(reason).Str("peer", x.Peer).Str("addr", x.Addr).
		Str("duration", logfield.Duration(lived))
	const msg = "session with the exit lost; reconnecting"
	switch {
	case lived >= stableSession:
		r.reset()
	case r.choices > 1 && r.youngLosses == 0:
		// Another exit is tried first, at once; a second young loss in a
		// row backs off.
		r.youngLosses++
	default:
		wait := r.step() // it died young: back off
		ev.Str("retry_in", logfield.Duration(wait)).Msg(msg)
		return wait
	}
	ev.Msg(msg)
	return 0
}

// establish reaches an exit (package exits) until a session is up, which
// it makes current and returns, or ctx ends (nil).
func (k *Keeper) establish(ctx context.Context, r *redial) *Session {
	for {
		if !exits.Sleep(ctx, minBackoff-time.Since(r.last), nil) {
			return nil
		}
		r.last = time.Now()
		log := r.attemptLog()
		addrs, errs := exits.Resolve(ctx, k.peers, k.cfg.DialTimeout, k.Lookup)
		addrs = exits.RotateAfter(addrs, r.left.Addr)
		r.choices = len(addrs)
		s, failed := exits.Reach(ctx, addrs, k.Dial, func(x exits.Addr, c net.Conn) (*Session, error) {
			return k.start(ctx, log, x, c)
		})
		errs = append(errs, failed...)
		if s != nil {
			if r.left.Addr != "" && r.left.Addr != s.Exit.Addr {
				k.log.Info().Str("peer", s.Exit.Peer).Str("addr", s.Exit.Addr).
					Str("previous_peer", r.left.Peer).Str("previous_addr", r.left.Addr).
					Str("reason", r.leftWhy).AnErr("skipped", exits.Attempts(errs).OrNil()).
					Msg("failed over to another exit")
			}
			r.failures, r.logged, r.left = 0, "", exits.Addr{}
			k.cur.set(s)
			k.books.SessionMade()
			return s
		}
		if ctx.Err() != nil {
			return nil
		}
		var err error = exits.Attempts(errs)
		if len(errs) == 1 {
			err = errs[0].(*exits.Error).Err // one exit: its error, as it is
		}
		kind := failure(0)
		for _, xe := range errs {
			kind = max(kind, k.countFailure(xe))
		}
		k.cur.fail(err)
		wait := r.failed(kind, err)
		var wake <-chan struct{}
		if kind == failedDial {
			wake = k.kick // an application waits: the dial is cheap, retry now
		}
		if !exits.Sleep(ctx, wait, wake) {
			return nil
		}
	}
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
func (k *Keeper) countFailure(err error) failure {
	if de := (*exits.DialError)(nil); errors.As(err, &de) {
		k.books.DialFailed()
		return failedDial
	}
	switch f := k.books.HandshakeFailed(err, true); {
	case f == handshake.FailTimeout:
		return failedTimeout
	case f.Refused():
		return failedRejected
	}
	return failedOther
}
