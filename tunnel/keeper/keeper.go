// Package keeper is how the entry keeps its session with an exit: reaching
// one, failing over between several, keeping one session current and
// replacing it, and resuming a session whose connection broke. A Keeper
// holds everything that job needs, and nothing of carrying connections; it
// gets its settings, keys, log and ledger from the entry, and knows
// nothing else of it.
//
//	keeper.go   the Keeper: handing out the current session and streams on
//	            it (session, Open), the pinned keys (Reload); the current
//	            session itself, or why there is none (currentSession)
//	upkeep.go   Maintain: keep one session current, replace it on GoAway,
//	            on an unpinned key or after its share of streams; retire
//	            the one replaced
//	failover.go establish: reach one of the exits; the backoff and its log
//	            lines (redial); the pinned keys (Pins)
//	connect.go  one connection to one exit: dial, handshake, session
//	resume.go   resuming a session on a new connection
//
// The keeper hands out *Session (session, Open) and learns that a session
// is no longer current in one place (clearSession). The entry runs
// Maintain while it serves, and calls Open for every stream.
package keeper

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/exits"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Config is what the keeper needs of the entry's settings, with the
// defaults filled in.
type Config struct {
	Peers        []string      // the exits' addresses (HOST:PORT), in order of preference
	DialTimeout  time.Duration // to reach an exit, and wait for a session
	KeepAlive    time.Duration // interval of the session's keepalive pings, and of TCP keepalive
	Window       uint32        // per-stream flow-control window in bytes
	ResumeWindow time.Duration // how long a broken session may be resumed; 0 or less: never
}

// Keeper keeps the entry's session with an exit: one is current at a time
// (cur), made by Maintain, handed out by session and Open. Its methods are
// safe for concurrent use; Maintain runs once at a time.
type Keeper struct {
	cfg   Config
	peers []string             // the exits' addresses (HOST:PORT), cfg.Peers
	keys  atomic.Pointer[Pins] // swapped by Reload
	v1    v1Exits              // exits that speak protocol version 1 only
	log   zerolog.Logger
	books *ledger.Ledger // the entry's: sessions, handshakes, failures

	// Set by New; tests replace them before Maintain runs.
	Lookup       func(ctx context.Context, host string) ([]string, error) // net.DefaultResolver.LookupHost
	Dial         func(ctx context.Context, addr string) (net.Conn, error) // a TCP dial within the dial timeout
	RecycleAfter int64                                                    // streams per session before it is replaced: maxSessionStreams

	kick  chan struct{} // an application waits: retry now (buffered, 1)
	repin chan struct{} // reload changed the pinned keys (buffered, 1)

	cur currentSession // the current session, or why there is none
}

// New returns the keeper of an entry with settings cfg (defaults
// filled in) and keys p, which logs to log and counts in books. It starts
// nothing.
func New(cfg Config, p *Pins, log zerolog.Logger, books *ledger.Ledger) *Keeper {
	k := &Keeper{
		cfg:          cfg,
		peers:        cfg.Peers,
		Lookup:       net.DefaultResolver.LookupHost,
		log:          log,
		books:        books,
		RecycleAfter: maxSessionStreams,
		kick:         make(chan struct{}, 1),
		repin:        make(chan struct{}, 1),
	}
	k.cur.changed = make(chan struct{})
	k.Dial = k.dialTCP
	k.keys.Store(p)
	return k
}

// session returns the current session, waiting up to the dial timeout for
// one (and asking Maintain to retry now); the error says why there is none.
func (k *Keeper) session(ctx context.Context) (*Session, error) {
	timer := time.NewTimer(k.cfg.DialTimeout)
	defer timer.Stop()
	for {
		s, changed, lastErr := k.cur.state()
		if s != nil && !s.Sess.IsClosed() && !s.retiring.Load() {
			return s, nil
		}
		if exits.Lasting(lastErr) {
			return nil, lastErr
		}
		select {
		case k.kick <- struct{}{}:
		default:
		}
		select {
		case <-changed:
		case <-timer.C:
			if lastErr == nil {
				lastErr = fmt.Errorf("no session after %v", k.cfg.DialTimeout)
			}
			return nil, lastErr
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// open opens a stream on the current session. A session the exit is just
// shutting down refuses it; then it tries the next session once. A session
// just replaced refuses it too; its replacement is current already.
func (k *Keeper) Open(ctx context.Context) (*Session, *session.Stream, error) {
	goneAway := false
	for {
		s, err := k.session(ctx)
		if err != nil {
			return nil, nil, err
		}
		st, err := s.open()
		switch {
		case err == nil:
			if s.opened.Add(1) == k.RecycleAfter {
				close(s.full)
			}
			return s, st, nil
		case errors.Is(err, errRetiring):
		case errors.Is(err, session.ErrGoneAway) && !goneAway:
			goneAway = true
			k.clearSession(s, err)
		default:
			return nil, nil, err
		}
	}
}

// fingerprint is the fingerprint of the entry's own key, the one its next
// handshake uses.
func (k *Keeper) Fingerprint() string {
	return handshake.Fingerprint(&k.keys.Load().Handshake.PrivateKey.PublicKey)
}

// reload pins peerKeys and exitKeys, and uses key, from the next handshake
// on; Maintain retires a session whose exit key is pinned no more.
func (k *Keeper) Reload(key *rsa.PrivateKey, peerKeys *handshake.KeySet, exitKeys map[string]*handshake.KeySet) error {
	for _, peer := range k.peers {
		ks := exitKeys[peer]
		if ks == nil {
			ks = peerKeys
		}
		if ks == nil || ks.Len() == 0 {
			return fmt.Errorf("tunnel: reload needs at least one key for the exit at %s", peer)
		}
	}
	cfg := *k.keys.Load().Handshake
	cfg.PrivateKey, cfg.PeerKey, cfg.PeerKeys = key, nil, peerKeys
	k.keys.Store(&Pins{Handshake: &cfg, Exits: exitKeys})
	select {
	case k.repin <- struct{}{}:
	default:
	}
	return nil
}

// Pins returns the keys in use: the entry's own, and the exits' it pins.
func (k *Keeper) Pins() *Pins { return k.keys.Load() }

// Current returns the current session, or nil.
func (k *Keeper) Current() *Session { return k.cur.get() }

// Healthy reports whether a session with the exit is up.
func (k *Keeper) Healthy() bool { return k.cur.healthy() }

// Ready returns nil while a session with the exit is up, and otherwise why
// there is none.
func (k *Keeper) Ready() error { return k.cur.ready() }

// Attempted waits until the first attempt to reach the exit has ended,
// with a session or a failure, or until ctx ends (its error).
func (k *Keeper) Attempted(ctx context.Context) error { return k.cur.attempted(ctx) }

// clearSession forgets s, if it is still the current session, because of
// why. It is where the keeper learns that a session is no longer current:
// lost, going away, unpinned, refusing streams, or the entry is stopping.
func (k *Keeper) clearSession(s *Session, why error) { k.cur.clear(s, why) }

// currentSession is the keeper's current session, or why there is none,
// with its own lock, and a channel for those who wait for it to change
// (wireguard-go's Keypairs: the current keypair under its own lock). Safe
// for concurrent use.
type currentSession struct {
	mu      sync.Mutex
	s       *Session      // nil while there is none
	changed chan struct{} // closed, and replaced, whenever s or lastErr changes
	lastErr error         // why the last attempt to reach the exit failed
}

// get returns the current session, or nil.
func (c *currentSession) get() *Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s
}

// state returns the current session (or nil), a channel closed when it or
// the last error changes, and the last error.
func (c *currentSession) state() (*Session, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s, c.changed, c.lastErr
}

// notify wakes the waiters of the current session. Callers hold mu.
func (c *currentSession) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// set makes s the current session.
func (c *currentSession) set(s *Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s, c.lastErr = s, nil
	c.notify()
}

// clear forgets s, if it is still the current session, because of why.
func (c *currentSession) clear(s *Session, why error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s == s {
		c.s, c.lastErr = nil, why
		c.notify()
	}
}

// fail records why the last attempt to reach the exit failed.
func (c *currentSession) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastErr = err
	c.notify()
}

// healthy reports whether a session with the exit is up.
func (c *currentSession) healthy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s != nil && !c.s.Sess.IsClosed()
}

// errNoSession is the entry's reason for not being ready before any
// attempt has failed.
var errNoSession = errors.New("no session with the exit yet")

// ready returns nil while a session with the exit is up, and otherwise why
// there is none.
func (c *currentSession) ready() error {
	if c.healthy() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastErr != nil {
		return fmt.Errorf("no session with the exit: %w", c.lastErr)
	}
	return errNoSession
}

// attempted waits until the first attempt to reach the exit has ended, with
// a session or a failure, or until ctx ends (its error).
func (c *currentSession) attempted(ctx context.Context) error {
	for {
		c.mu.Lock()
		// Every attempt that ends sets one of them; neither is cleared
		// without setting the other.
		done, changed := c.s != nil || c.lastErr != nil, c.changed
		c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
