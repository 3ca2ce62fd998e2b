package handshake

// What a Responder lets a connection cost before the initiator has proven
// anything, shared by a Responder and those WithKeys derives from it:
//
//   - slots: handshakes in progress, from a hello that passed every check
//     the responder can make without its private key until the handshake
//     ends. A version 1 hello is unauthenticated until KEY_I: anyone who
//     knows an authorized key id can send one. Such hellos may hold at most
//     half the slots, and at most an eighth per key id, until sig_i has
//     verified; a version 2 hello is signed and may take any slot. So
//     forged version 1 hellos can never keep a version 2 initiator out.
//     Nor a version 1 initiator that has completed a handshake with the
//     same key from the same source (an IPv4 address, an IPv6 /64) within
//     provenFor: its hellos take slots as signed ones do (proven).
//   - cpu: private-key operations at once, one per CPU but one, read from
//     GOMAXPROCS each time (the agent may lower it after construction).
//   - replay: the version 2 hellos seen within their window.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

type admission struct {
	slots  slots
	cpu    cpuLimit
	replay replayCache
	proven provenSources

	// Observed by tests: slots taken and private-key operations begun,
	// since construction.
	slotsTaken atomic.Int64
	privateOps atomic.Int64
}

func newAdmission(maxInProgress int) *admission {
	return &admission{
		slots:  slots{max: maxInProgress, byKey: map[[KeyIDLen]byte]int{}},
		cpu:    cpuLimit{limit: cpuDefault},
		replay: replayCache{max: replayCacheSize, seen: map[[16]byte]int64{}},
	}
}

// slots counts the handshakes in progress. Its methods are safe for
// concurrent use.
type slots struct {
	max int

	mu         sync.Mutex
	held       int
	unverified int                    // of held: version 1, before sig_i verified
	byKey      map[[KeyIDLen]byte]int // unverified, by key id; no zero entries
}

// unverifiedMax is how many slots version 1 hellos may hold before KEY_I:
// half, so that the other half stays for signed hellos.
func (s *slots) unverifiedMax() int { return max(1, s.max/2) }

// perKeyMax is how many of those one key id may hold: an eighth, so that
// knowing one key id is not enough to fill even that half.
func (s *slots) perKeyMax() int { return max(1, s.max/8) }

// slot is one taken slot. release gives it back; verified marks a version 1
// handshake whose sig_i has verified, which then counts as signed. Neither
// is safe for concurrent use; both are idempotent.
type slot struct {
	s        *slots
	keyID    [KeyIDLen]byte
	unsigned bool // counted in unverified and byKey
	released bool
}

// take takes a slot for a hello that is signed (version 2) or not (version
// 1, for keyID). Without one it returns a rejection with ALERT busy.
func (s *slots) take(signed bool, keyID [KeyIDLen]byte) (*slot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.held >= s.max:
		return nil, reject(AlertBusy, "too many handshakes in progress; retry later",
			"%d handshakes already in progress", s.max)
	case !signed && s.unverified >= s.unverifiedMax():
		return nil, reject(AlertBusy, "too many version 1 handshakes in progress; retry later, or speak version 2",
			"%d unauthenticated version 1 handshakes already in progress, the most allowed of %d slots", s.unverified, s.max)
	case !signed && s.byKey[keyID] >= s.perKeyMax():
		return nil, reject(AlertBusy, "too many version 1 handshakes in progress for this key; retry later, or speak version 2",
			"%d unauthenticated version 1 handshakes already in progress for key %s, the most allowed for one key", s.byKey[keyID], FingerprintID(keyID))
	}
	s.held++
	if !signed {
		s.unverified++
		s.byKey[keyID]++
	}
	return &slot{s: s, keyID: keyID, unsigned: !signed}, nil
}

func (sl *slot) verified() {
	sl.s.mu.Lock()
	defer sl.s.mu.Unlock()
	sl.unsign()
}

func (sl *slot) release() {
	sl.s.mu.Lock()
	defer sl.s.mu.Unlock()
	if sl.released {
		return
	}
	sl.unsign()
	sl.released = true
	sl.s.held--
}

// unsign moves sl out of the unverified counts; s.mu is held.
func (sl *slot) unsign() {
	if !sl.unsigned {
		return
	}
	sl.unsigned = false
	sl.s.unverified--
	if sl.s.byKey[sl.keyID]--; sl.s.byKey[sl.keyID] == 0 {
		delete(sl.s.byKey, sl.keyID)
	}
}

// counts returns the slots held, and of them the unverified ones (tests).
func (s *slots) counts() (held, unverified int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held, s.unverified
}

// cpuDefault leaves one CPU to the sessions, of those GOMAXPROCS allows now.
func cpuDefault() int { return max(1, runtime.GOMAXPROCS(0)-1) }

// cpuLimit is a semaphore whose size limit() is read at each acquire, so
// that a change of GOMAXPROCS takes effect on the next operation. It is
// safe for concurrent use.
type cpuLimit struct {
	limit func() int

	mu    sync.Mutex
	inUse int
	freed chan struct{} // closed and replaced when an operation ends
}

// acquire waits until fewer than limit() operations are in progress, or
// ctx ends.
func (c *cpuLimit) acquire(ctx context.Context) (release func(), err error) {
	for {
		c.mu.Lock()
		if c.inUse < c.limit() {
			c.inUse++
			c.mu.Unlock()
			return c.release, nil
		}
		if c.freed == nil {
			c.freed = make(chan struct{})
		}
		freed := c.freed
		c.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *cpuLimit) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inUse--
	if c.freed != nil {
		close(c.freed)
		c.freed = nil
	}
}

// replayCacheSize bounds the replay cache: 2^16 hellos, about 5 MB at
// most. Only hellos whose signature verified are remembered, so only the
// holders of authorized keys can fill it; and a full cache refuses (ALERT
// busy) rather than forgets, so that it never lets a replay through.
const replayCacheSize = 1 << 16

// replayCache remembers the version 2 hellos accepted, by key id and
// random_i, until their time is outside the window. It is safe for
// concurrent use.
type replayCache struct {
	max int

	mu        sync.Mutex
	seen      map[[16]byte]int64 // SHA-256(key_id || random_i)[:16] -> expiry, Unix seconds
	lastSweep int64
}

var errReplayFull = errors.New("replay cache full")

func replayKey(keyID [KeyIDLen]byte, random []byte) [16]byte {
	return [16]byte(digest(keyID[:], random)[:16])
}

// seenBefore reports whether the hello was recorded and is still within its
// window at now.
func (c *replayCache) seenBefore(k [16]byte, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.seen[k]
	return ok && exp >= now.Unix()
}

// record remembers the hello of time t until it leaves the window. It
// reports false if the hello is already there (a replay that raced the
// original past seenBefore), and errReplayFull if the cache is full of
// hellos still in their window.
func (c *replayCache) record(k [16]byte, t uint64, now time.Time) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := now.Unix()
	if exp, ok := c.seen[k]; ok && exp >= n {
		return false, nil
	}
	if len(c.seen) >= c.max && n != c.lastSweep { // sweep at most once a second
		c.lastSweep = n
		for key, exp := range c.seen {
			if exp < n {
				delete(c.seen, key)
			}
		}
	}
	if len(c.seen) >= c.max {
		return false, fmt.Errorf("%w: %d hellos within the last %v", errReplayFull, len(c.seen), 2*HelloSkew)
	}
	c.seen[k] = int64(t) + int64(HelloSkew/time.Second)
	return true, nil
}

// provenFor is how long a completed version 1 handshake vouches for its
// source and key (see admission); provenMax bounds how many such pairs are
// kept (past it the oldest goes).
const (
	provenFor = 10 * time.Minute
	provenMax = 4096
)

// provenSources are the (source, key id) pairs of recent completed
// handshakes. Safe for concurrent use.
type provenSources struct {
	mu    sync.Mutex
	until map[provenPair]time.Time
}

type provenPair struct {
	src netip.Prefix
	key [KeyIDLen]byte
}

// source is the prefix addr is vouched for under: an IPv4 address or an
// IPv6 /64; ok is false if addr is not an IP address.
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

// add records that addr completed a handshake with key at now.
func (p *provenSources) add(addr net.Addr, key [KeyIDLen]byte, now time.Time) {
	src, ok := source(addr)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.until == nil {
		p.until = make(map[provenPair]time.Time)
	}
	if len(p.until) >= provenMax {
		var oldest provenPair
		first := true
		for k, t := range p.until {
			if !now.Before(t) {
				delete(p.until, k)
			} else if first || t.Before(p.until[oldest]) {
				oldest, first = k, false
			}
		}
		if len(p.until) >= provenMax {
			delete(p.until, oldest)
		}
	}
	p.until[provenPair{src, key}] = now.Add(provenFor)
}

// has reports whether addr completed a handshake with key within provenFor
// of now.
func (p *provenSources) has(addr net.Addr, key [KeyIDLen]byte, now time.Time) bool {
	src, ok := source(addr)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return now.Before(p.until[provenPair{src, key}])
}
