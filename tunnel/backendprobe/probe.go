// Package backendprobe tells whether an exit's backend accepts
// connections, for readiness (/readyz). A stream's dial that succeeded
// within Every says so for free; otherwise a probe dial does, at most one
// per Every, and its result is kept until then, so that however often
// readiness is asked the backend sees at most one probe connection (opened
// and closed at once, no byte sent) per Every.
package backendprobe

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/config"
)

// Every bounds how often a Probe dials its backend.
const Every = 5 * time.Second

// Probe tells whether a backend accepted a connection recently. Safe for
// concurrent use.
type Probe struct {
	addr              string // as the settings give it, for messages
	network, dialAddr string // what to dial (config.Network)
	dial              func(ctx context.Context, network, addr string) (net.Conn, error)

	lastOK atomic.Int64 // UnixNano of the last connection the backend accepted; 0: none yet

	mu      sync.Mutex // held during a probe, so that one runs at a time
	lastTry time.Time  // start of the last probe
	lastErr error      // its result
}

// New returns the Probe of the backend at addr (host:port or unix:PATH, as
// settings give it), whose probe dials take up to timeout.
func New(addr string, timeout time.Duration) *Probe {
	d := &net.Dialer{Timeout: timeout}
	network, dialAddr := config.Network(addr)
	return &Probe{addr: addr, network: network, dialAddr: dialAddr, dial: d.DialContext}
}

// Accepted records that the backend accepted a connection at now. It costs
// one atomic store: the exit calls it on every stream's dial.
func (p *Probe) Accepted(now time.Time) { p.lastOK.Store(now.UnixNano()) }

func (p *Probe) recent(now time.Time) bool {
	ok := p.lastOK.Load()
	return ok != 0 && now.Sub(time.Unix(0, ok)) < Every
}

// Check returns nil if the backend accepted a connection within Every
// of now; otherwise the result of a probe dial, made now unless one was
// made within Every.
func (p *Probe) Check(ctx context.Context, now time.Time) error {
	if p.recent(now) {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.recent(now) { // a probe finished while this call waited for mu
		return nil
	}
	if !p.lastTry.IsZero() && now.Sub(p.lastTry) < Every {
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
	p.Accepted(now)
	return nil
}
