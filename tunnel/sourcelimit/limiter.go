// Package sourcelimit admits an exit's new handshakes per source: a token
// bucket for the rate, and a cap on the handshakes in progress, so that one
// source can hold neither every handshake slot nor every private-key
// operation. Its memory is bounded (the source seen least recently is
// forgotten first). Model: wireguard-go's ratelimiter.
package sourcelimit

import (
	"container/list"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// MaxPerSource bounds the handshakes in progress from one source,
// from the accepted connection to the end of the handshake, so that one
// source cannot hold every slot of --max-handshakes or every private-key
// slot.
const MaxPerSource = 8

// maxSources bounds the rate limiter's memory. Past it, the source seen
// least recently is forgotten (it starts again with a full bucket if it
// comes back). Refusing new sources instead would let anyone with that many
// sources (an IPv6 /48 holds 65536 /64s) lock every new entry out; letting
// them pass unlimited would lift the limit for everyone.
const maxSources = 1 << 16

// Why Limiter refuses a handshake: the text goes to the exit's log.
var (
	ErrOverRate = errors.New("over the per-source handshake rate")
	ErrTooMany  = errors.New("too many handshakes in progress from this source")
)

// Limiter admits new handshakes per source: a token bucket for the
// rate and a cap on those in progress. A source is an IPv4 address or an
// IPv6 /64 (a subscriber is commonly given a /64 or more, and picks any
// address in it). It is safe for concurrent use.
type Limiter struct {
	rate, burst float64 // tokens per second, bucket size

	mu      sync.Mutex
	buckets map[netip.Prefix]*list.Element // of *bucket
	lru     list.List                      // of *bucket, least recently used first
	active  map[netip.Prefix]int           // handshakes in progress; no zero entries
}

type bucket struct {
	src    netip.Prefix
	tokens float64
	last   time.Time
}

// New returns a Limiter that lets each source make rate handshakes a
// second, in bursts of up to twice that (at least one).
func New(rate float64) *Limiter {
	return &Limiter{
		rate:    rate,
		burst:   max(1, 2*rate),
		buckets: make(map[netip.Prefix]*list.Element),
		active:  make(map[netip.Prefix]int),
	}
}

// source is the key addr is limited under; ok is false if addr is not IP.
func source(addr net.Addr) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}, false
	}
	ip := ap.Addr().Unmap().WithZone("")
	bits := 64
	if ip.Is4() {
		bits = 32
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// Admit takes a token of addr's source and a place among its handshakes in
// progress. It returns ErrOverRate or ErrTooMany to refuse, or the function
// that gives the place back when the handshake ends. Addresses that are not
// IP are not limited.
func (l *Limiter) Admit(addr net.Addr, now time.Time) (done func(), err error) {
	src, ok := source(addr)
	if !ok {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.take(src, now) {
		return nil, ErrOverRate
	}
	if l.active[src] >= MaxPerSource {
		return nil, ErrTooMany
	}
	l.active[src]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.active[src]--; l.active[src] == 0 {
			delete(l.active, src)
		}
	}, nil
}

// take takes a token of src's bucket and reports whether there was one.
// Callers hold mu.
func (l *Limiter) take(src netip.Prefix, now time.Time) bool {
	var b *bucket
	if e, ok := l.buckets[src]; ok {
		b = e.Value.(*bucket)
		l.lru.MoveToBack(e)
	} else {
		if len(l.buckets) >= maxSources {
			oldest := l.lru.Front()
			delete(l.buckets, oldest.Value.(*bucket).src)
			l.lru.Remove(oldest)
		}
		b = &bucket{src: src, tokens: l.burst, last: now}
		l.buckets[src] = l.lru.PushBack(b)
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
