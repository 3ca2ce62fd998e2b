package keeper

// Resuming the entry's session on a new connection (the keeper,
// keeper.go) when its own breaks: the session parks (tunnel/session), and
// the keeper dials the same exit again and resumes it with the session's
// ticket (handshake.Resume), until the session is back, the exit refuses
// (it no longer knows the session: it restarted, or the window passed on
// its side), or the session's window ends. Meanwhile its streams wait.

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/exits"
	"github.com/tunnel-dev/tunnel/tunnel/rawio"
)

// Pace of the attempts to resume: soon after the break, then every
// resumeRetryMax, so that the streams move within moments of the link's
// return. A link that breaks again within resumeStable of a resumption
// (a flapping link) is resumed after the wait the last one reached, so
// that it costs both agents at most one attempt per resumeRetryMax.
const (
	resumeRetryMin = 100 * time.Millisecond
	resumeRetryMax = time.Second
	resumeStable   = 10 * time.Second
)

// resumeLater starts resuming s, unless that runs already.
func (k *Keeper) resumeLater(hard context.Context, s *Session) {
	if s.ticket == nil || !s.resuming.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.resuming.Store(false)
		k.resume(hard, s)
	}()
}

// resume brings s a new connection to its exit until the session's link is
// up again or the session ends. An exit that refuses the resumption gets
// s closed: its streams are reset, and Maintain makes a new session.
func (k *Keeper) resume(hard context.Context, s *Session) {
	log := k.log.With().Str("peer", s.Exit.Peer).Str("addr", s.Exit.Addr).Logger()
	wait := resumeRetryMin
	if time.Since(s.resumedAt) < resumeStable {
		wait = s.resumeWait
		if !exits.Sleep(hard, wait, s.Sess.Done()) {
			return
		}
	}
	for attempt := 1; s.Sess.Link().Down; attempt++ {
		err := k.resumeOnce(hard, s)
		if err == nil {
			k.books.Resumed()
			s.resumedAt, s.resumeWait = time.Now(), min(2*wait, resumeRetryMax)
			return
		}
		if s.Sess.IsClosed() || hard.Err() != nil {
			return
		}
		if refusedResume(err) {
			k.books.ResumeRefused()
			log.Warn().Err(err).Msg("the exit refused to resume the session (did it restart?): its connections are reset, and a new session is made")
			s.Sess.Close()
			return
		}
		log.Debug().Err(err).Int("attempt", attempt).Msg("resuming the session failed; trying again")
		if !exits.Sleep(hard, wait, s.Sess.Done()) {
			return
		}
		wait = min(2*wait, resumeRetryMax)
	}
}

// resumeOnce dials s's exit and resumes s over the new connection.
func (k *Keeper) resumeOnce(ctx context.Context, s *Session) error {
	dctx, cancel := context.WithTimeout(ctx, k.cfg.DialTimeout)
	c, err := k.Dial(dctx, s.Exit.Addr)
	cancel()
	if err != nil {
		return &exits.DialError{Err: err}
	}
	cfg := *k.keys.Load().ForExit(s.Exit.Peer)
	cfg.Version, cfg.ResumeWindow = handshake.Version2, max(k.cfg.ResumeWindow, 0)
	res, err := handshake.Resume(ctx, rawio.Wrap(c), &cfg, *s.ticket)
	if err != nil {
		return err
	}
	return s.Sess.Resume(res.Conn)
}

// refusedResume reports an error after which resuming again is pointless:
// the exit does not know the session, the keys no longer match, or nothing
// listens at its address (its process, and so the session, is gone: an
// exit that is only unreachable does not refuse the connection).
func refusedResume(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	switch handshake.Classify(err) {
	case handshake.FailUnknownSession, handshake.FailUnknownKey, handshake.FailBadSignature, handshake.FailProtocol, handshake.FailIncompatible:
		return true
	}
	return errors.Is(err, handshake.ErrUnknownSession)
}
