package listen

import (
	"sync/atomic"
	"syscall"
)

// Connections before their handshake. The exit's handshake slots
// (--max-handshakes) bound the handshakes past a valid HELLO, and
// sourcelimit.Limiter bounds those of one source; but a connection that sends
// nothing, or garbage, holds a descriptor and a goroutine for up to the
// hello timeout before either applies, and a flood from many sources could
// hold every descriptor the process may open. Gate bounds all of
// them together, so that part of the open-file limit is always left to the
// sessions and the connections they carry.

// maxPending bounds pendingLimit: more connections than this waiting for
// their handshake at once is a flood, whatever the open-file limit.
const maxPending = 4096

// pendingLimit is the cap of a Gate for a process whose soft
// open-file limit is soft: half of what fdReserve leaves, at least 1 and at
// most maxPending.
func pendingLimit(soft uint64) int {
	if soft <= fdReserve+2 {
		return 1
	}
	return int(min((soft-fdReserve)/2, maxPending))
}

// Gate counts the connections that have been accepted and have not
// finished their handshake, up to a cap. Safe for concurrent use.
type Gate struct {
	limit int64
	n     atomic.Int64
}

// ProcessGate returns a gate sized from this process's open-file
// limit (pendingLimit), or for maxPending if it cannot be read.
func ProcessGate() *Gate {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return NewGate(maxPending)
	}
	return NewGate(pendingLimit(lim.Cur))
}

// NewGate returns a gate for at most limit connections (at least 1).
func NewGate(limit int) *Gate {
	return &Gate{limit: int64(max(limit, 1))}
}

// Enter takes a place for one connection and reports whether there was
// one. A caller that got true calls Leave exactly once, when the
// connection's handshake has ended (succeeded, failed or refused); one that
// got false closes the connection without a handshake.
func (g *Gate) Enter() bool {
	if g.n.Add(1) > g.limit {
		g.n.Add(-1)
		return false
	}
	return true
}

// Leave gives back the place Enter took.
func (g *Gate) Leave() { g.n.Add(-1) }

// Pending is how many connections hold a place now.
func (g *Gate) Pending() int { return int(g.n.Load()) }
