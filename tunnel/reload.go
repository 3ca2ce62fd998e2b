package tunnel

// Reloading keys while an agent runs. The caller loads and checks every
// file first, so that a file that does not parse, or holds a weak key,
// changes nothing; Reload then swaps the new keys in with one atomic store,
// so that a half-read state never takes effect. Handshakes in progress
// finish with the keys they began with, and sessions that are up keep
// running, except, on the exit, the sessions of an entry key that is no
// longer authorized: they get GoAway at once (their entry makes a new
// session for new streams, with the key it has now) and are closed after
// the drain timeout.

import (
	"crypto/rsa"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Reload makes the entry use key and pin peerKeys (any of which an exit
// may present) and, for the exits with their own, exitKeys (by address,
// as in EntryConfig) from its next handshake on. A session with an exit
// whose key it pins no more is retired: new streams go to a new session,
// made with a pinned key, and the connections open on the retired one may
// finish (the last step of a routine rotation must cut nothing).
func (e *Entry) Reload(key *rsa.PrivateKey, peerKeys *handshake.KeySet, exitKeys map[string]*handshake.KeySet) error {
	if key == nil {
		return errors.New("tunnel: reload needs the entry's private key")
	}
	return e.keeper.Reload(key, peerKeys, exitKeys)
}

// Reload makes the exit answer with key and accept the entry keys in
// authorized from its next handshake on, resolves its access rules against
// them for every stream that opens from then on, and winds down the
// sessions of keys authorized no more; it returns how many. A rule naming a
// key that authorized does not hold admits nobody, and is logged.
func (e *Exit) Reload(key *rsa.PrivateKey, authorized *handshake.KeySet) (closing int, err error) {
	resp, err := e.keys.Load().resp.WithKeys(key, authorized)
	if err != nil {
		return 0, err
	}
	acc, unresolved := resolveAccess(e.cfg.Access, authorized)
	if len(unresolved) > 0 {
		e.log.Warn().Strs("rules", ruleKeys(unresolved)).
			Msg("access rules name keys that are no longer among the authorized keys: they admit nobody; name the keys that replace them")
	}
	// The keys first, then the sessions: a handshake that completes
	// meanwhile either sees the new set (closeIfRevoked) or has its session
	// listed here.
	e.keys.Store(&exitKeys{resp: resp, authorized: authorized, access: acc})
	keep := make(map[string]bool)
	for _, fp := range authorized.Fingerprints() {
		keep[fp] = true
	}
	revoked := e.books.SessionsExcept(keep)
	for _, s := range revoked {
		// Each GoAway may wait for its session's send queue (up to yamux's
		// write timeout): one session that does not read must not hold up
		// the others, nor Reload.
		go s.GoAway()
		time.AfterFunc(e.cfg.DrainTimeout, func() { s.Close() })
	}
	return len(revoked), nil
}

// closeIfRevoked closes sess, just established with an entry whose key is
// peer, if a reload removed that key while the handshake ran.
func (a *acceptor) closeIfRevoked(log zerolog.Logger, sess *session.Session, peer *rsa.PublicKey) {
	if _, ok := a.keys.Load().authorized.Lookup(handshake.KeyID(peer)); !ok {
		log.Warn().Msg("closing the session: its key was removed from the authorized keys while the handshake ran")
		sess.Close()
	}
}
