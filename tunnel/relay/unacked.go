package relay

import (
	"sync"
	"sync/atomic"

	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// maxUnacked bounds what Unacked keeps. yamux lets a stream send one
// initial window (256 KiB) before the peer's first window update, which
// carries its ACK, so it is never reached unless the peer misbehaves.
const maxUnacked = 1 << 20

// Unacked keeps what an entry sends into a stream until the exit accepts
// it (the stream's acknowledgement). An exit that is going away refuses
// streams whose open crossed its GoAway with a reset and no
// acknowledgement, before anything in it sees the stream, so their
// application bytes can be sent again on another session. What it keeps
// goes once the stream is acknowledged, at the next chunk sent or when Run
// starts (the exit's status came), so that a connection that goes quiet
// keeps nothing. Safe for concurrent use; read Bytes only once the Relay
// has reported.
type Unacked struct {
	mu   sync.Mutex
	buf  []byte
	done atomic.Bool // the stream was acknowledged, or too much was sent: keep nothing
}

// Bytes is what was kept: what a stream NotAccepted carried.
func (u *Unacked) Bytes() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.buf
}

// Overflowed reports whether more was sent than Unacked keeps (or the
// stream was accepted): what was sent cannot be sent again.
func (u *Unacked) Overflowed() bool { return u.done.Load() }

// keep records p, about to be written to st, while the peer has not
// acknowledged st.
func (u *Unacked) keep(st *session.Stream, p []byte) {
	if u == nil || u.done.Load() {
		return
	}
	if !st.Pending() {
		u.release()
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.done.Load():
	case len(u.buf)+len(p) > maxUnacked:
		u.done.Store(true)
		u.buf = nil
	default:
		u.buf = append(u.buf, p...)
	}
}

// release drops what u keeps, and keeps nothing more: the stream was
// accepted.
func (u *Unacked) release() {
	if u == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.done.Store(true)
	u.buf = nil
}
