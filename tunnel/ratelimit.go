package tunnel

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxSources bounds the limiter's memory; past it, idle sources are
// forgotten, and if none are idle new sources pass unlimited (the cap on
// handshakes in progress still holds).
const maxSources = 1 << 16

// sourceLimiter is a token bucket per source IP for new handshakes. It is
// safe for concurrent use.
type sourceLimiter struct {
	rate, burst float64 // tokens per second, bucket size

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newSourceLimiter(rate float64) *sourceLimiter {
	return &sourceLimiter{rate: rate, burst: max(1, 2*rate), buckets: make(map[netip.Addr]*bucket)}
}

// allow takes a token for addr's IP and reports whether there was one.
func (l *sourceLimiter) allow(addr net.Addr, now time.Time) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return true // not IP: nothing to key on
	}
	ip := ap.Addr().Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[ip]
	if !ok {
		if len(l.buckets) >= maxSources && !l.sweep(now) {
			return true
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets sources whose bucket has refilled; it reports whether any
// were forgotten. Callers hold mu.
func (l *sourceLimiter) sweep(now time.Time) bool {
	n := len(l.buckets)
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for ip, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, ip)
		}
	}
	return len(l.buckets) < n
}
