package session

import (
	"errors"
	"sync"
	"time"
)

// Read passes the peer's bytes to yamux, watching its frames; between two
// of the peer's frames it passes the RSTs of localResets.
func (m *recordConn) Read(p []byte) (int, error) {
	if m.in.atBoundary() {
		if n := m.local.read(p); n > 0 {
			return n, nil
		}
	}
	n, err := m.rlink.Read(p)
	for n == 0 && err != nil && m.res != nil {
		// The link broke: wait for the next one, unless the session has
		// ended. The peer sends again what this side did not receive.
		l, end := m.res.next(m, m.rlink, err)
		if l == nil {
			return 0, end
		}
		m.rlink = l
		n, err = l.Read(p)
	}
	if m.res != nil {
		if verr := m.res.received(m, n); verr != nil {
			return 0, verr
		}
	}
	for rest := p[:n]; len(rest) > 0; {
		k, complete := m.in.step(rest)
		rest = rest[k:]
		if complete {
			if ferr := m.peerFrame(&m.in.hdr); ferr != nil {
				return 0, ferr // yamux ends the session with this reason, and closes the conn
			}
		}
	}
	return n, err
}

var errPingFlood = errors.New("tunnel: peer sent pings faster than the limit (ping flood); session closed")

// peerFrame sees each of the peer's frame headers.
func (m *recordConn) peerFrame(h *header) error {
	switch h.typ() {
	case typePing:
		if h.flags()&flagSYN != 0 && !m.pings.take(time.Now()) {
			return errPingFlood
		}
		return nil
	case typeGoAway:
		m.gaOnce.Do(func() { close(m.goAway) })
		return nil
	}
	id, flags := h.stream(), h.flags()
	if flags&flagSYN != 0 {
		// A stream the peer opens; this side's ACK goes out when it
		// accepts the stream, so it counts as acknowledged.
		m.streams.watch(id)
		m.streams.set(id, stateAcked)
	}
	if flags&flagACK != 0 {
		m.streams.set(id, stateAcked) // a stream this side opened
	}
	if flags&flagFIN != 0 {
		m.streams.set(id, statePeerFIN)
	}
	return nil
}

// pingBucket is a token bucket for the peer's ping requests.
type pingBucket struct {
	tokens float64
	last   time.Time
}

func (b *pingBucket) take(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens, b.last = pingBurst, now
	}
	b.tokens = min(pingBurst, b.tokens+now.Sub(b.last).Seconds()*pingRate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// localResets are RST frames for this side's yamux, one per stream this
// side reset, so that yamux ends its stream as if the peer had reset it.
// Read passes them in between two of the peer's frames: at the latest with
// the peer's next frame (a keepalive comes every keepalive interval). Safe
// for concurrent use; read is called by yamux's single read goroutine.
type localResets struct {
	mu      sync.Mutex
	pending []uint32
	frame   header
	left    []byte // of frame, not yet read
}

func (l *localResets) add(id uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = append(l.pending, id)
}

// read copies the next RST frame, or what is left of it, into p.
func (l *localResets) read(p []byte) int {
	if len(l.left) == 0 {
		l.mu.Lock()
		if len(l.pending) == 0 {
			l.mu.Unlock()
			return 0
		}
		id := l.pending[0]
		l.pending = l.pending[1:]
		if len(l.pending) == 0 {
			l.pending = nil // give the backing array back
		}
		l.mu.Unlock()
		l.frame = rstFrame(id)
		l.left = l.frame[:]
	}
	n := copy(p, l.left)
	l.left = l.left[n:]
	return n
}
