package keeper

// Session upkeep on the entry (the keeper, keeper.go): one session to an
// exit is current at a time (Keeper.cur); Maintain keeps one up, replaces
// it when the exit goes away (GoAway), when its key is pinned no more, or
// when it has carried its share of streams, and retires the one it
// replaces: the retired session takes no new streams and ends once its
// last stream has. How an exit is reached is in failover.go.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/exits"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/session"
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

// Session is one authenticated session with an exit, as the entry keeps
// it. Exit, Fingerprint and Sess are set when it is made and never change.
type Session struct {
	Exit        exits.Addr
	Fingerprint string // the exit's key, as the handshake proved it
	Sess        *session.Session
	ticket      *handshake.Ticket // resumes sess on a new connection; nil: it cannot resume
	resuming    atomic.Bool       // a resume loop runs for it
	resumedAt   time.Time         // the last resumption; of the resume loop
	resumeWait  time.Duration     // the wait before the next, if it comes soon; of the resume loop

	opened   atomic.Int64  // streams opened on it
	full     chan struct{} // closed when opened reaches the entry's RecycleAfter
	opening  atomic.Int64  // OpenStream calls in progress
	retiring atomic.Bool   // a newer session takes the new streams
}

// errRetiring: a session being retired opens no more streams.
var errRetiring = errors.New("tunnel: session is being replaced")

// Retiring reports whether s is being replaced: a newer session takes the
// new streams, and s ends once its last stream has.
func (s *Session) Retiring() bool { return s.retiring.Load() }

// open opens a stream unless s is retiring. Together with retire it makes
// sure no stream is opened on a session after it was found idle and closed:
// open counts itself in opening before it checks retiring, retire sets
// retiring before it checks opening.
func (s *Session) open() (*session.Stream, error) {
	s.opening.Add(1)
	defer s.opening.Add(-1)
	if s.retiring.Load() {
		return nil, errRetiring
	}
	return s.Sess.Open()
}

// Maintain keeps one session to the exit up while ctx lives, reconnecting
// with backoff. A session lives until hard ends, so that draining
// connections keep it. A session is retired, left to finish its streams
// while new ones go to the next session, when the exit sends GoAway (it is
// shutting down; the next session is made at once) and when it has carried
// RecycleAfter streams (the next session is made first).
func (k *Keeper) Maintain(ctx, hard context.Context) {
	var retiring sync.WaitGroup
	defer retiring.Wait()
	handOver := func(s *Session) {
		retiring.Add(1)
		go func() {
			defer retiring.Done()
			k.retire(s, hard)
		}()
	}
	r := redial{log: k.log, peers: k.peers, backoff: minBackoff}
	for ctx.Err() == nil {
		s := k.establish(ctx, &r)
		if s == nil {
			return
		}
		born := time.Now()
		full := s.full             // closed when s has carried RecycleAfter streams
		var retry <-chan time.Time // a failed replacement is tried again
	watch:
		for {
			select {
			case <-s.Sess.PeerGoneAway():
				k.clearSession(s, errors.New("the exit is going away"))
				k.log.Info().Str("peer", s.Exit.Peer).Str("addr", s.Exit.Addr).
					Msg("the exit is shutting this session down; its open streams may finish, new ones go to a new session")
				handOver(s)
				r.reset()
				r.left, r.leftWhy = s.Exit, "the exit is going away (GoAway)"
				break watch
			case <-k.repin:
				if k.keys.Load().pinned(s.Exit.Peer, s.Fingerprint) {
					continue
				}
				k.clearSession(s, errors.New("the exit's key is no longer pinned"))
				k.log.Warn().Str("peer", s.Exit.Peer).Str("peer_fingerprint", s.Fingerprint).
					Msg("the exit's key is no longer pinned: new connections go to a new session; those open on this one may finish (restart the entry to cut them, if the key was compromised)")
				handOver(s)
				r.reset()
				r.left, r.leftWhy = s.Exit, "its key is no longer pinned"
				break watch
			case <-s.Sess.LinkDown():
				k.resumeLater(hard, s)
				continue
			case <-full:
			case <-retry:
			case <-s.Sess.Done():
				reason, _ := s.Sess.End()
				k.clearSession(s, fmt.Errorf("session lost: %v", reason))
				if ctx.Err() != nil {
					return
				}
				if !exits.Sleep(ctx, r.lost(s.Exit, reason, time.Since(born)), nil) {
					return
				}
				break watch
			case <-ctx.Done():
				k.clearSession(s, errors.New("entry is shutting down"))
				k.hold(s, hard)
				return
			}
			// s has carried its share of streams: replace it, keeping it
			// current until the replacement is up.
			full, retry = nil, nil
			k.log.Info().Int64("streams", s.opened.Load()).
				Str("reason", "yamux keeps a few bytes per stream until its session ends (hashicorp/yamux#148)").
				Msg("replacing the session after its share of streams; its open connections stay on it")
			next, err := k.connect(ctx, k.log, s.Exit)
			if err != nil {
				if ctx.Err() == nil {
					k.countFailure(err)
					wait := r.step()
					k.log.Warn().Err(err).Str("retry_in", logfield.Duration(wait)).
						Msg("cannot establish a replacement session; the current one stays in use")
					retry = time.After(wait)
				}
				continue
			}
			k.cur.set(next)
			k.books.SessionRecycled()
			handOver(s)
			s, born, full = next, time.Now(), next.full
		}
	}
}

// hold waits for s to close, closing it when hard ends.
func (k *Keeper) hold(s *Session, hard context.Context) {
	select {
	case <-s.Sess.Done():
	case <-hard.Done():
		s.Sess.Close()
	}
}

// retirePoll is how often a retiring session is checked for open streams.
const retirePoll = 100 * time.Millisecond

// retire stops s from opening streams, and closes it once its last stream
// is done (or when hard ends). The entry, as the yamux client, ends a
// session the exit sent GoAway on: if the exit closed it instead, the close
// could overtake the FINs yamux has queued but not yet sent, and the entry
// would take complete streams for cut ones.
func (k *Keeper) retire(s *Session, hard context.Context) {
	s.retiring.Store(true)
	t := time.NewTicker(retirePoll)
	defer t.Stop()
	for {
		select {
		case <-s.Sess.Done():
			if reason, clean := s.Sess.End(); !clean {
				k.log.Warn().Err(reason).Msg("a session finishing its streams was lost")
			}
			return
		case <-hard.Done():
			s.Sess.Close()
			return
		case <-s.Sess.LinkDown():
			k.resumeLater(hard, s)
		case <-t.C:
			if s.opening.Load() == 0 && s.Sess.NumStreams() == 0 {
				s.Sess.Close()
				return
			}
		}
	}
}
