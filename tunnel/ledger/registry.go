package ledger

import (
	"sync"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// registry knows an agent's live sessions, by peer fingerprint,
// from the handshake that made each until it ends, and what the ended ones
// of each peer add up to. /status counts them, /metrics shows them by
// peer, and the exit's reload finds the sessions of revoked keys in it.
// Safe for concurrent use.
type registry struct {
	mu     sync.Mutex
	live   map[*session.Session]string // the peer's fingerprint
	ended  map[string]*peerTotals      // by peer fingerprint: authenticated peers only
	resent uint64                      // bytes sent again after resumptions, by the ended sessions
}

// peerTotals are what the sessions of one peer that have ended add up to.
type peerTotals struct {
	outcomes [session.NumOutcomes]int64
	records  frame.Stats
}

// add registers sess, of the peer with fingerprint fp, until it ends (a
// goroutine waits for that; it ends with the session).
func (r *registry) add(sess *session.Session, fp string) {
	r.mu.Lock()
	if r.live == nil {
		r.live = make(map[*session.Session]string)
		r.ended = make(map[string]*peerTotals)
	}
	r.live[sess] = fp
	r.mu.Unlock()
	go func() {
		<-sess.Done()
		r.remove(sess)
	}()
}

// remove moves an ended session from the live set into its peer's totals.
func (r *registry) remove(sess *session.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fp := r.live[sess]
	delete(r.live, sess)
	t := r.ended[fp]
	if t == nil {
		t = new(peerTotals)
		r.ended[fp] = t
	}
	t.outcomes[sess.Outcome()]++
	addStats(&t.records, sess.Stats())
	r.resent += sess.Link().Resent
}

// count is how many sessions are live.
func (r *registry) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.live)
}

// except lists the live sessions of the peers not in keep (by
// fingerprint): for a reload that removed their keys.
func (r *registry) except(keep map[string]bool) []*session.Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*session.Session
	for sess, fp := range r.live {
		if !keep[fp] {
			out = append(out, sess)
		}
	}
	return out
}

// peerView is what /metrics shows of the sessions.
type peerView struct {
	up      map[string]int        // live sessions by peer
	ended   map[string]peerTotals // ended sessions by peer
	records frame.Stats           // of every session, live and ended
	parked  int                   // live sessions whose connection broke, waiting for a new one
	resent  uint64                // bytes sent again after resumptions, by every session
}

// view returns a copy of what the registry knows.
func (r *registry) view() peerView {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := peerView{up: make(map[string]int), ended: make(map[string]peerTotals, len(r.ended))}
	v.resent = r.resent
	for sess, fp := range r.live {
		v.up[fp]++
		addStats(&v.records, sess.Stats())
		l := sess.Link()
		v.resent += l.Resent
		if l.Down {
			v.parked++
		}
	}
	for fp, t := range r.ended {
		v.ended[fp] = *t
		addStats(&v.records, t.records)
	}
	return v
}

// addStats adds the counts of b to a.
func addStats(a *frame.Stats, b frame.Stats) {
	a.RecordsSent += b.RecordsSent
	a.RecordsReceived += b.RecordsReceived
	a.KeyUpdatesSent += b.KeyUpdatesSent
	a.KeyUpdatesReceived += b.KeyUpdatesReceived
}
