package session

// What a resumable session keeps of what it sent, and how the two sides
// acknowledge what they received (PROTOCOL-v2.md section 6.2): the writer
// keeps every byte it hands to a link until the peer's ACK covers it,
// packing small writes into reused chunks; the reader counts what it
// receives and asks the writer for an ACK every ackEvery bytes, within
// ackDelay of a pause, and in answer to a probe. The link's life (breaks,
// the window, a new link) is in resume.go.

import (
	"errors"
	"fmt"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/logfield"
)

// full reports whether Write must wait for the peer's ACK before it queues
// more: what is kept and queued has reached maxKept. Nil-safe.
func (r *resumption) full(queued int) bool {
	return r != nil && r.keptMem+queued >= maxKept
}

// work reports whether the writer has something to do on an established
// link: frames (frames), or what resumption sends.
func (r *resumption) work(frames bool) bool {
	return r.state == linkUp && (frames || r.resend || r.needAck || r.probe)
}

// control sends, on an established link, what is kept once a new link
// took over, then a due ACK; it reports whether it sent anything (it
// unlocks mu meanwhile). Only the writer calls it, holding mu.
func (r *resumption) control(m *recordConn) bool {
	link := m.link
	switch {
	case r.resend:
		r.resend = false
		bufs := make([][]byte, len(r.kept))
		copy(bufs, r.kept)
		if len(bufs) > 0 {
			bufs[0] = bufs[0][r.head:]
		}
		n := r.sent - r.acked
		m.mu.Unlock()
		_, err := link.WriteBuffers(bufs...)
		m.mu.Lock()
		r.resent += n
		if err != nil {
			r.down(m, link, err)
		}
		return true
	case r.needAck || r.probe:
		n, reply := r.recv.Load(), r.probe
		r.needAck, r.probe = false, false
		r.lastAck.Store(n)
		m.mu.Unlock()
		err := link.WriteAck(n, reply)
		m.mu.Lock()
		if err != nil {
			r.down(m, link, err)
		}
		return true
	}
	return false
}

// keep takes what the writer is about to hand to a link, out (its queue)
// and big (a body still yamux's), as sent. It returns a buffer for the
// writer's next queue once the write is done, if one is free. Callers hold
// mu.
func (r *resumption) keep(out, big []byte) []byte {
	r.sent += uint64(len(out) + len(big))
	if len(out) >= keptChunk/2 && cap(out) <= 2*len(out) {
		r.kept = append(r.kept, out) // adopted: the writer gets another
		r.keptMem += cap(out)
		out = nil
	} else {
		r.pack(out)
	}
	r.pack(big)
	if out != nil {
		return out
	}
	spare := r.spareQueue
	r.spareQueue = nil
	return spare
}

// pack copies p into the kept chunks.
func (r *resumption) pack(p []byte) {
	for len(p) > 0 {
		last := len(r.kept) - 1
		if last < 0 || len(r.kept[last]) == cap(r.kept[last]) || cap(r.kept[last]) != keptChunk {
			var c []byte
			if n := len(r.chunks); n > 0 {
				c, r.chunks = r.chunks[n-1], r.chunks[:n-1]
			} else {
				c = make([]byte, 0, keptChunk)
			}
			r.kept = append(r.kept, c[:0])
			r.keptMem += keptChunk
			last++
		}
		k := r.kept[last]
		n := copy(k[len(k):cap(k)], p)
		r.kept[last] = k[:len(k)+n]
		p = p[n:]
	}
}

// drop forgets what the peer acknowledged up to offset n.
func (r *resumption) drop(n uint64) {
	gone := int(n - r.acked)
	r.acked = n
	for gone > 0 {
		k := r.kept[0]
		left := len(k) - r.head
		if gone < left {
			r.head += gone
			return
		}
		gone -= left
		r.keptMem -= cap(k)
		switch {
		case cap(k) == keptChunk && len(r.chunks) < maxFreeChunks:
			r.chunks = append(r.chunks, k[:0])
		case cap(k) != keptChunk && cap(k) <= maxQueued && cap(k) > cap(r.spareQueue):
			r.spareQueue = k[:0] // the writer's next queue
		}
		r.kept[0] = nil
		r.kept = r.kept[1:]
		r.head = 0
	}
	if len(r.kept) == 0 {
		r.kept = nil
	}
}

// onAck takes the peer's ACK: it received n bytes. Called by the reading
// goroutine, inside the link's Read.
func (r *resumption) onAck(m *recordConn, n uint64, reply bool) {
	r.seen.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if n < r.acked || n > r.sent {
		r.violation = fmt.Errorf("tunnel: the peer acknowledged %d bytes, after %d, of %d sent: protocol error", n, r.acked, r.sent)
		m.link.NetConn().Close() // ends the Read in progress; next returns the violation
		return
	}
	r.drop(n)
	if r.state == linkResuming {
		r.awaiting.Store(false)
		r.state = linkUp
		r.resumes++
		r.resend = r.sent > r.acked
		r.expiry.Stop()
		r.log.Info().Str("down_for", logfield.Duration(time.Since(r.downAt))).
			Uint64("resent_bytes", r.sent-r.acked).Msg("session resumed on a new connection")
		r.downAt, r.downErr = time.Time{}, nil
	}
	if reply {
		r.needAck = true
	}
	m.wake.Broadcast()
}

// received counts n bytes read from the peer, and asks for an ACK every
// ackEvery bytes. Called by the reading goroutine; it returns the error
// that ends the session if the peer's ACK made no sense.
func (r *resumption) received(m *recordConn, n int) error {
	if r.violation != nil { // set by onAck on this goroutine
		return r.violation
	}
	if n == 0 {
		return nil
	}
	if r.awaiting.Load() {
		return errors.New("tunnel: the peer sent data on a new connection before its ACK: protocol error")
	}
	r.seen.Add(1)
	got := r.recv.Add(uint64(n))
	switch {
	case got-r.lastAck.Load() >= ackEvery:
		r.lastAck.Store(got)
		m.mu.Lock()
		r.needAck = true
		m.wake.Broadcast()
		m.mu.Unlock()
	case r.ackTimer.CompareAndSwap(false, true):
		time.AfterFunc(ackDelay, func() { r.ackLate(m) })
	}
	return nil
}

// ackLate asks for an ACK of what was received since the last one, if
// anything was.
func (r *resumption) ackLate(m *recordConn) {
	r.ackTimer.Store(false)
	if r.recv.Load() == r.lastAck.Load() {
		return
	}
	m.mu.Lock()
	r.needAck = true
	m.wake.Broadcast()
	m.mu.Unlock()
}
