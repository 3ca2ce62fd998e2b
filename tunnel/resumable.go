package tunnel

// The exit's resumable sessions: a session whose handshake negotiated
// resumption is kept here, by its id, for as long as it lives, so that a
// resumption (a RESUME_I naming it) finds it; the handshake asks through
// Resumable (handshake.SessionLookup) and the acceptor hands the new
// connection over (resume). A session whose connection broke waits here,
// parked, at most its window; the exit keeps at most maxParked of them,
// and maxParkedPerKey per entry key, closing a session that parks past
// either bound, so that broken links cannot pin the exit's memory.

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Bounds on parked sessions. Each keeps up to 8 MiB of bytes sent and not
// acknowledged, besides its streams' buffers and backend connections.
const (
	maxParked       = 128
	maxParkedPerKey = 16
)

// resumables are the exit's resumable sessions, by id. Safe for
// concurrent use.
type resumables struct {
	mu   sync.Mutex
	byID map[[handshake.SessionIDLen]byte]resumable
}

type resumable struct {
	ticket handshake.Ticket
	sess   *session.Session
}

var errNoSuchSession = errors.New("tunnel: no such session to resume (it ended)")

// Resumable is the ticket of the session id names, while it lives.
func (r *resumables) Resumable(id [handshake.SessionIDLen]byte) (handshake.Ticket, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.byID[id]
	if !ok || s.sess.IsClosed() {
		return handshake.Ticket{}, false
	}
	return s.ticket, true
}

// add keeps sess, made with t, until the returned remove is called.
func (r *resumables) add(t handshake.Ticket, sess *session.Session) (remove func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = make(map[[handshake.SessionIDLen]byte]resumable)
	}
	r.byID[t.ID] = resumable{ticket: t, sess: sess}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.byID, t.ID)
	}
}

// resume hands conn, a resumed connection, to the session id names.
func (r *resumables) resume(id [handshake.SessionIDLen]byte, conn *frame.Conn) error {
	r.mu.Lock()
	s, ok := r.byID[id]
	r.mu.Unlock()
	if !ok {
		conn.Close()
		return errNoSuchSession
	}
	return s.sess.Resume(conn)
}

// overParked reports whether sess, whose link just broke, parks past the
// bounds: with it, more than maxParked sessions wait, or more than
// maxParkedPerKey of its entry key's.
func (r *resumables) overParked(sess *session.Session, key [handshake.KeyIDLen]byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	total, ofKey := 0, 0
	for _, s := range r.byID {
		if !s.sess.Link().Down {
			continue
		}
		total++
		if s.ticket.PeerKeyID == key {
			ofKey++
		}
	}
	return total > maxParked || ofKey > maxParkedPerKey
}

// boundParking closes sess when its link breaks and it would park past the
// exit's bounds (resumables.overParked), or while the exit drains (ctx has
// ended): a parked session would hold the drain up for an entry that may
// be gone. It returns when sess ends.
func (a *acceptor) boundParking(ctx context.Context, log zerolog.Logger, sess *session.Session, key [handshake.KeyIDLen]byte) {
	draining := ctx.Done()
	for {
		why := ""
		select {
		case <-sess.Done():
			return
		case <-draining:
			draining = nil
			if sess.Link().Down {
				why = "the exit is shutting down"
			}
		case <-sess.LinkDown():
			switch {
			case ctx.Err() != nil:
				why = "the exit is shutting down"
			case a.parked.overParked(sess, key):
				a.books.ResumeRefused()
				why = fmt.Sprintf("too many sessions wait to be resumed (at most %d, %d per key)", maxParked, maxParkedPerKey)
			}
		}
		if why != "" {
			log.Warn().Str("reason", why).Msg("closing a session whose connection broke, without waiting for its resumption")
			sess.Close()
			return
		}
	}
}
