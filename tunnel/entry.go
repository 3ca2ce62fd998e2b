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
	"github.com/tunnel-dev/tunnel/tunnel/keeper"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// EntryConfig is what an entry agent needs: its settings and its keys.
type EntryConfig struct {
	Settings EntrySettings
	Key      *rsa.PrivateKey
	PeerKey  *rsa.PublicKey
	// PeerKeys, when set, are the exit's keys, any of which it may present
	// (two while its key is rotated); PeerKey is then unused.
	PeerKeys *handshake.KeySet
	// ExitKeys are the pinned keys of the exits that have their own (a
	// peer given as HOST:PORT=KEYS), by address (HOST:PORT); any other
	// exit may present any of PeerKey or PeerKeys.
	ExitKeys map[string]*handshake.KeySet
	Version  string // this build's, for the build-info metric
}

// Entry accepts application connections and carries each as a stream of
// one long-lived, authenticated session to the exit. Keeping that session
// is its keeper's job (package keeper); the Entry carries connections on it.
type Entry struct {
	cfg        EntrySettings  // with the defaults filled in
	keeper     *keeper.Keeper // the session with an exit, and the keys
	log        zerolog.Logger
	pool       *relay.Pool
	writeStall time.Duration
	books      *ledger.Ledger       // every count, once (package ledger)
	met        *prometheus.Registry // /metrics, read from books

	running    atomic.Pointer[entryRun] // while Run or ServeListeners runs (apientry.go)
	runMu      sync.Mutex
	runChanged chan struct{} // closed, and replaced, when a run begins; under runMu
}

// NewEntry checks cfg and returns an entry agent. It starts nothing.
func NewEntry(cfg EntryConfig, log zerolog.Logger) (*Entry, error) {
	if cfg.Key == nil {
		return nil, errors.New("tunnel: entry needs its private key")
	}
	settings := cfg.Settings.withDefaults()
	for _, addr := range settings.Peers {
		if cfg.PeerKey == nil && cfg.PeerKeys == nil && cfg.ExitKeys[addr] == nil {
			return nil, fmt.Errorf("tunnel: entry needs the public keys of the exit at %s", addr)
		}
	}
	if len(settings.Peers) == 0 {
		return nil, errors.New("tunnel: entry needs at least one exit")
	}
	log = log.With().Str("role", "entry").Logger()
	books := ledger.New(ledger.Entry)
	keys := &keeper.Pins{
		Handshake: &handshake.Config{
			PrivateKey: cfg.Key,
			PeerKey:    cfg.PeerKey,
			PeerKeys:   cfg.PeerKeys,
			Timeout:    settings.HandshakeTimeout,
		},
		Exits: cfg.ExitKeys,
	}
	return &Entry{
		cfg:        settings,
		keeper:     keeper.New(keeperConfig(settings), keys, log, books),
		log:        log,
		pool:       relay.NewPool(),
		writeStall: relay.DefaultWriteStall,
		books:      books,
		met:        ledger.NewRegistry(cfg.Version, books),
		runChanged: make(chan struct{}),
	}, nil
}

// Stats returns the entry's counters, with the record counts of the
// current session.
func (e *Entry) Stats() Stats {
	st := e.books.Stats()
	if s := e.keeper.Current(); s != nil {
		rs := s.Sess.Stats()
		st.RecordsSent, st.RecordsReceived = rs.RecordsSent, rs.RecordsReceived
	}
	return st
}

// Metrics returns the entry's registry, which the status endpoint serves.
func (e *Entry) Metrics() *prometheus.Registry { return e.met }

// Healthy reports whether a session with the exit is up.
func (e *Entry) Healthy() bool { return e.keeper.Healthy() }

// ServiceListener is a listener whose application connections go to one
// service of the exit.
type ServiceListener struct {
	Listener net.Listener
	Service  string // "" or config.DefaultService for the exit's default service
}

// Serve accepts applications on ln, for the exit's default service, until
// ctx is done; see ServeListeners.
func (e *Entry) Serve(ctx context.Context, ln net.Listener) error {
	return e.ServeListeners(ctx, []ServiceListener{{Listener: ln}})
}

// ServeListeners accepts applications on every listener of lns, each for
// its service, until ctx is done, then stops accepting, lets open
// connections (and those of DialContext) finish for up to the drain
// timeout, closes everything and returns. Every service's streams share the
// one session. It closes the listeners. With no listener it is Run.
func (e *Entry) ServeListeners(ctx context.Context, lns []ServiceListener) error {
	names := make([]serviceName, len(lns))
	for i, l := range lns {
		name, err := parseServiceName(l.Service)
		if err != nil {
			return fmt.Errorf("tunnel: listener on %s: %w", l.Listener.Addr(), err)
		}
		names[i] = name
	}
	run, endRun, err := e.beginRun(ctx)
	if err != nil {
		return err
	}
	defer endRun()
	hard, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	var wg, conns sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		releaseWhenQuiet(hard, releaseCheck)
	}()

	wg.Add(1)
	go func() {
		defer wg.Done()
		e.keeper.Maintain(ctx, hard)
	}()

	// One accept loop per listener; the first that fails stops them all.
	acceptCtx, stopAccepting := context.WithCancel(ctx)
	defer stopAccepting()
	var accepting sync.WaitGroup
	var acceptErrOnce sync.Once
	var acceptErr error
	for i, l := range lns {
		name := names[i]
		svc := e.books.Service(name.String())
		l.Listener = listen.Wrap(l.Listener, e.log) // EMFILE and the like wait, and do not end it
		stop := context.AfterFunc(acceptCtx, func() { l.Listener.Close() })
		defer stop()
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			for {
				c, err := l.Listener.Accept()
				if err != nil {
					if ctx.Err() == nil && !session.IsClosedErr(err) {
						acceptErrOnce.Do(func() { acceptErr = fmt.Errorf("tunnel: accept: %w", err) })
					}
					stopAccepting()
					return
				}
				conns.Add(1)
				go e.serveApp(hard, c, name, svc, conns.Done)
			}
		}()
	}
	accepting.Wait()
	if len(lns) == 0 {
		<-ctx.Done() // Run: the session serves DialContext until then
	}

	drained := make(chan struct{})
	go func() { conns.Wait(); close(drained) }()
	if acceptErr == nil {
		e.log.Info().Str("drain_timeout", logfield.Duration(e.cfg.DrainTimeout)).Msg("shutting down: draining open connections")
		deadline := time.NewTimer(e.cfg.DrainTimeout)
		defer deadline.Stop()
	drain:
		for _, ch := range []<-chan struct{}{drained, run.dialed.drained()} {
			select {
			case <-ch:
			case <-deadline.C:
				e.log.Warn().Msg("drain timeout: closing the connections still open")
				break drain
			}
		}
	}
	stopAll()
	<-drained
	wg.Wait()
	return acceptErr
}

// keeperConfig is what the keeper needs of the entry's settings s.
func keeperConfig(s EntrySettings) keeper.Config {
	return keeper.Config{
		Peers:        s.Peers,
		DialTimeout:  s.DialTimeout,
		KeepAlive:    s.KeepAlive,
		Window:       s.Window,
		ResumeWindow: s.ResumeWindow,
	}
}
