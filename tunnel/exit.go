package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// ExitConfig is what an exit agent needs: its settings and its keys.
type ExitConfig struct {
	Settings   ExitSettings
	Key        *rsa.PrivateKey
	Authorized *handshake.KeySet
	Version    string // this build's, for the build-info metric
}

// Exit accepts entry agents, authenticates them, and forwards each of their
// streams to the backend. It runs the listener and the drain (Serve), and
// holds the two values that do the work: the acceptor, which lets an entry
// in and makes its session (acceptor.go), and the forwarder, which serves
// the streams of the sessions (incoming.go, apiexit.go); exitSession
// (exitsession.go) joins the two for one session.
type Exit struct {
	cfg      ExitSettings // with the defaults filled in
	log      zerolog.Logger
	keys     atomic.Pointer[exitKeys] // swapped whole by Reload; acceptor and fwd read it
	acceptor *acceptor                // admission, handshake, session
	fwd      *forwarder               // the services: streams to backends and Listeners
	books    *ledger.Ledger           // every count, once (package ledger)
	met      *prometheus.Registry     // /metrics, read from books
}

// exitKeys is the exit's key state: what NewExit builds and each Reload
// replaces whole, in one store. Immutable once stored: a handshake, or a
// stream, loads it once and uses that value throughout.
type exitKeys struct {
	resp       *handshake.Responder // answers handshakes with the exit's key
	authorized *handshake.KeySet    // the entry keys resp accepts
	access     access               // the access rules, resolved against authorized
}

// NewExit checks cfg and returns an exit agent. It starts nothing.
func NewExit(cfg ExitConfig, log zerolog.Logger) (*Exit, error) {
	if cfg.Key == nil || cfg.Authorized == nil {
		return nil, errors.New("tunnel: exit needs its private key and the authorized entry keys")
	}
	settings := cfg.Settings.withDefaults()
	hs := handshake.Config{
		PrivateKey: cfg.Key,
		Authorized: cfg.Authorized,
		Timeout:    settings.HandshakeTimeout,
	}
	if settings.RequireSignedHello {
		hs.MinVersion = handshake.Version2
	}
	parked := &resumables{}
	if settings.ResumeWindow > 0 {
		hs.ResumeWindow, hs.Sessions = settings.ResumeWindow, parked
	}
	resp, err := handshake.NewResponder(hs, settings.MaxHandshakes)
	if err != nil {
		return nil, err
	}
	x := &Exit{
		cfg: settings,
		log: log.With().Str("role", "exit").Logger(),
	}
	x.books = ledger.New(ledger.Exit)
	x.met = ledger.NewRegistry(cfg.Version, x.books)
	x.acceptor = newAcceptor(settings, &x.keys, x.log, x.books, parked)
	if x.fwd, err = newForwarder(settings, &x.keys, x.books); err != nil {
		return nil, err
	}
	acc, unresolved := resolveAccess(settings.Access, cfg.Authorized)
	if len(unresolved) > 0 {
		return nil, &UnknownKeysError{Rules: unresolved}
	}
	x.keys.Store(&exitKeys{resp: resp, authorized: cfg.Authorized, access: acc})
	return x, nil
}

// Stats returns the exit's counters, with those of each service.
func (e *Exit) Stats() Stats {
	st := e.books.Stats()
	return st
}

// Metrics returns the exit's registry, which the status endpoint serves.
func (e *Exit) Metrics() *prometheus.Registry { return e.met }

// Serve accepts entry agents on ln until ctx is done, then stops accepting,
// lets open streams finish for up to the drain timeout, closes everything
// and returns. It closes ln.
func (e *Exit) Serve(ctx context.Context, ln net.Listener) error {
	// hard ends every session: at the end of the drain, or at once on error.
	hard, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	var wg sync.WaitGroup
	released := make(chan struct{})
	go func() {
		defer close(released)
		releaseWhenQuiet(hard, releaseCheck)
	}()
	var streams openStreams

	ln = listen.Wrap(ln, e.log) // EMFILE and the like wait, and do not end Serve
	stopAccept := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopAccept()
	var acceptErr error
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !session.IsClosedErr(err) {
				acceptErr = fmt.Errorf("tunnel: accept: %w", err)
			}
			break
		}
		if !e.acceptor.enter(conn) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if in := e.acceptor.accept(ctx, hard, conn); in != nil {
				newExitSession(in, e.fwd, e.cfg.MaxStreams, &streams).serve(ctx, hard)
			}
		}()
	}

	// Drain: open streams may finish until the deadline. Then entries,
	// which got GoAway, close their sessions themselves (so that nothing
	// yamux still has queued is lost); what is left at the deadline is cut.
	drained := streams.drained()
	sessionsDone := make(chan struct{})
	go func() { wg.Wait(); close(sessionsDone) }()
	if acceptErr == nil {
		e.log.Info().Str("drain_timeout", logfield.Duration(e.cfg.DrainTimeout)).Msg("shutting down: draining open streams")
		deadline := time.NewTimer(e.cfg.DrainTimeout)
		defer deadline.Stop()
		select {
		case <-drained:
			select {
			case <-sessionsDone:
			case <-deadline.C:
			}
		case <-deadline.C:
			e.log.Warn().Msg("drain timeout: closing the streams still open")
		}
	}
	stopAll()
	<-released
	<-sessionsDone // every stream has ended with its session
	return acceptErr
}
