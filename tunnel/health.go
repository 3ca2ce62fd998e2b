package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/config"
)

// Readiness, as the status endpoint's /readyz reports it.
//
// The entry is ready while it has a session with the exit. The exit is
// ready while its backend accepts connections: a stream's dial that
// succeeded within probeEvery says so for free; otherwise a probe dial
// does, at most one per probeEvery, and its result is kept until then, so
// that however often /readyz is asked the backend sees at most one probe
// connection (opened and closed at once, no byte sent) per probeEvery.
// Whether the agent is still accepting (not draining) is the caller's part.

// probeEvery bounds how often the exit dials its backend to check it.
const probeEvery = 5 * time.Second

// errNoSession is the entry's reason for not being ready before any
// attempt has failed.
var errNoSession = errors.New("no session with the exit yet")

// Ready returns nil while the entry has a session with the exit, and
// otherwise why it has none. Safe for concurrent use.
func (e *Entry) Ready(context.Context) error { return e.keeper.cur.ready() }

// Attempted waits until the entry's first attempt to reach the exit has
// ended, with a session or a failure (Ready then tells which), and returns
// nil; or until ctx ends, and returns its error. Serve makes the attempts.
// Safe for concurrent use.
func (e *Entry) Attempted(ctx context.Context) error { return e.keeper.cur.attempted(ctx) }

// Ready returns nil while the backend of every service of the exit accepts
// TCP connections (see above), and otherwise the first dial error, naming
// its service unless it is the default one. A probe honours ctx. Safe for
// concurrent use.
func (e *Exit) Ready(ctx context.Context) error {
	for _, r := range e.routes.all {
		if err := r.probe.check(ctx, time.Now()); err != nil && r.name != "" {
			return fmt.Errorf("service %s: %w", r.name, err)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// backendProbe tells whether the backend accepted a connection recently.
type backendProbe struct {
	addr              string // as the settings give it, for messages
	network, dialAddr string // what to dial (config.Network)
	dial              func(ctx context.Context, network, addr string) (net.Conn, error)

	lastOK atomic.Int64 // UnixNano of the last connection the backend accepted; 0: none yet

	mu      sync.Mutex // held during a probe, so that one runs at a time
	lastTry time.Time  // start of the last probe
	lastErr error      // its result
}

func newBackendProbe(addr string, timeout time.Duration) *backendProbe {
	d := &net.Dialer{Timeout: timeout}
	network, dialAddr := config.Network(addr)
	return &backendProbe{addr: addr, network: network, dialAddr: dialAddr, dial: d.DialContext}
}

// accepted records that the backend accepted a connection at now. It costs
// one atomic store: the exit calls it on every stream's dial.
func (p *backendProbe) accepted(now time.Time) { p.lastOK.Store(now.UnixNano()) }

func (p *backendProbe) recent(now time.Time) bool {
	ok := p.lastOK.Load()
	return ok != 0 && now.Sub(time.Unix(0, ok)) < probeEvery
}

// check returns nil if the backend accepted a connection within probeEvery
// of now; otherwise the result of a probe dial, made now unless one was
// made within probeEvery.
func (p *backendProbe) check(ctx context.Context, now time.Time) error {
	if p.recent(now) {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.recent(now) { // a probe finished while this call waited for mu
		return nil
	}
	if !p.lastTry.IsZero() && now.Sub(p.lastTry) < probeEvery {
		return p.lastErr
	}
	p.lastTry = now
	c, err := p.dial(ctx, p.network, p.dialAddr)
	if err != nil {
		p.lastErr = fmt.Errorf("backend %s does not accept connections: %w", p.addr, err)
		return p.lastErr
	}
	c.Close()
	p.lastErr = nil
	p.accepted(now)
	return nil
}
