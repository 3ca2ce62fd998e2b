package tunnel

// The keeper: how the entry keeps its session with an exit. One value per
// entry holds everything that job needs, and nothing of carrying
// connections; it gets its settings, log and ledger from the entry, and
// knows nothing else of it.
//
//	keeper.go   the keeper: handing out the current session and streams on
//	            it (session, open), the pinned keys (reload); the current
//	            session itself, or why there is none (currentSession)
//	upkeep.go   maintain: keep one session current, replace it on GoAway,
//	            on an unpinned key or after its share of streams; retire
//	            the one replaced
//	failover.go establish: reach one of the exits; the backoff and its log
//	            lines (redial)
//	connect.go  one connection to one exit: dial, handshake, session
//
// The keeper hands out *entrySession (session, open) and learns that a
// session is no longer current in one place (clearSession). The Entry runs
// maintain while Run or ServeListeners runs, and calls open for every
// stream.

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

// keeper keeps the entry's session with an exit: one is current at a time
// (cur), made by maintain, handed out by session and open. Its methods are
// safe for concurrent use; maintain runs once at a time.
type keeper struct {
	cfg    EntrySettings        // with the defaults filled in
	peers  []string             // the exits' addresses (HOST:PORT), cfg.Peers
	keys   atomic.Pointer[pins] // swapped by reload
	v1     v1Exits              // exits that speak protocol version 1 only
	lookup func(ctx context.Context, host string) ([]string, error)
	dial   func(ctx context.Context, addr string) (net.Conn, error) // dialTCP; tests replace it
	log    zerolog.Logger
	books  *ledger.Ledger // the entry's: sessions, handshakes, failures
	// recycleAfter is maxSessionStreams; tests make it small.
	recycleAfter int64

	kick  chan struct{} // an application waits: retry now (buffered, 1)
	repin chan struct{} // reload changed the pinned keys (buffered, 1)

	cur currentSession // the current session, or why there is none
}

// newKeeper returns the keeper of an entry with settings cfg (defaults
// filled in) and keys p, which logs to log and counts in books. It starts
// nothing.
func newKeeper(cfg EntrySettings, p *pins, log zerolog.Logger, books *ledger.Ledger) *keeper {
	k := &keeper{
		cfg:          cfg,
		peers:        cfg.Peers,
		lookup:       net.DefaultResolver.LookupHost,
		log:          log,
		books:        books,
		recycleAfter: maxSessionStreams,
		kick:         make(chan struct{}, 1),
		repin:        make(chan struct{}, 1),
	}
	k.cur.changed = make(chan struct{})
	k.dial = k.dialTCP
	k.keys.Store(p)
	return k
}

// session returns the current session, waiting up to the dial timeout for
// one (and asking maintain to retry now); the error says why there is none.
func (k *keeper) session(ctx context.Context) (*entrySession, error) {
	timer := time.NewTimer(k.cfg.DialTimeout)
	defer timer.Stop()
	for {
		s, changed, lastErr := k.cur.state()
		if s != nil && !s.sess.IsClosed() && !s.retiring.Load() {
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
func (k *keeper) open(ctx context.Context) (*entrySession, *session.Stream, error) {
	goneAway := false
	for {
		s, err := k.session(ctx)
		if err != nil {
			return nil, nil, err
		}
		st, err := s.open()
		switch {
		case err == nil:
			if s.opened.Add(1) == k.recycleAfter {
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
func (k *keeper) fingerprint() string {
	return handshake.Fingerprint(&k.keys.Load().hs.PrivateKey.PublicKey)
}

// reload pins peerKeys and exitKeys, and uses key, from the next handshake
// on; maintain retires a session whose exit key is pinned no more.
func (k *keeper) reload(key *rsa.PrivateKey, peerKeys *handshake.KeySet, exitKeys map[string]*handshake.KeySet) error {
	for _, peer := range k.peers {
		ks := exitKeys[peer]
		if ks == nil {
			ks = peerKeys
		}
		if ks == nil || ks.Len() == 0 {
			return fmt.Errorf("tunnel: reload needs at least one key for the exit at %s", peer)
		}
	}
	cfg := *k.keys.Load().hs
	cfg.PrivateKey, cfg.PeerKey, cfg.PeerKeys = key, nil, peerKeys
	k.keys.Store(&pins{hs: &cfg, exits: exitKeys})
	select {
	case k.repin <- struct{}{}:
	default:
	}
	return nil
}

// clearSession forgets s, if it is still the current session, because of
// why. It is where the keeper learns that a session is no longer current:
// lost, going away, unpinned, refusing streams, or the entry is stopping.
func (k *keeper) clearSession(s *entrySession, why error) { k.cur.clear(s, why) }

// currentSession is the keeper's current session, or why there is none,
// with its own lock, and a channel for those who wait for it to change
// (wireguard-go's Keypairs: the current keypair under its own lock). Safe
// for concurrent use.
type currentSession struct {
	mu      sync.Mutex
	s       *entrySession // nil while there is none
	changed chan struct{} // closed, and replaced, whenever s or lastErr changes
	lastErr error         // why the last attempt to reach the exit failed
}

// get returns the current session, or nil.
func (c *currentSession) get() *entrySession {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s
}

// state returns the current session (or nil), a channel closed when it or
// the last error changes, and the last error.
func (c *currentSession) state() (*entrySession, <-chan struct{}, error) {
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
func (c *currentSession) set(s *entrySession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s, c.lastErr = s, nil
	c.notify()
}

// clear forgets s, if it is still the current session, because of why.
func (c *currentSession) clear(s *entrySession, why error) {
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
	return c.s != nil && !c.s.sess.IsClosed()
}

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
