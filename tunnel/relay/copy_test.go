package relay

import (
	"io"
	"testing"
	"time"
)

// deadlineRecorder records the write deadlines it is given.
type deadlineRecorder struct{ set []time.Time }

func (r *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	r.set = append(r.set, t)
	return nil
}

// TestWriteDeadlineMovesOnceHalfUsed: a deadline is moved only once half of
// it has passed, and then to a whole stall from now. Time passing is
// simulated by moving the armed deadline, so that a slow machine cannot
// change the outcome.
func TestWriteDeadlineMovesOnceHalfUsed(t *testing.T) {
	var d writeDeadline
	var r deadlineRecorder
	const stall = time.Hour
	before := time.Now()
	d.arm(&r, stall)
	d.arm(&r, stall)
	if len(r.set) != 1 || r.set[0].Before(before.Add(stall)) {
		t.Fatalf("two writes in a row: deadlines %v; want one, a stall from now", r.set)
	}
	d.at = time.Now().Add(stall/2 + time.Minute) // less than half used
	d.arm(&r, stall)
	if len(r.set) != 1 {
		t.Fatalf("with less than half the stall used: %d deadlines; want still 1", len(r.set))
	}
	d.at = time.Now().Add(stall/2 - time.Minute) // more than half used
	before = time.Now()
	d.arm(&r, stall)
	if len(r.set) != 2 || r.set[1].Before(before.Add(stall)) || !d.at.Equal(r.set[1]) {
		t.Fatalf("after half the stall: deadlines %v; want a second one at least %v from now", r.set, stall)
	}
}

// TestPoolShrink: a short read moves to the smallest size class that
// holds it, a long one keeps its buffer, and every buffer goes back to the
// class it came from.
func TestPoolShrink(t *testing.T) {
	p := NewPool()
	for _, c := range []struct{ n, wantCap int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 32 << 10}, {32 << 10, 32 << 10}, {32<<10 + 1, CopyBufSize}, {CopyBufSize, CopyBufSize},
	} {
		b := p.get()
		if len(*b) != CopyBufSize {
			t.Fatalf("get lent %d bytes, want %d", len(*b), CopyBufSize)
		}
		for i := range c.n {
			(*b)[i] = byte(i)
		}
		s := p.shrink(b, c.n)
		if cap(*s) != c.wantCap {
			t.Fatalf("%d bytes: a buffer of %d, want %d", c.n, cap(*s), c.wantCap)
		}
		for i := range c.n {
			if (*s)[i] != byte(i) {
				t.Fatalf("%d bytes: byte %d changed in the move", c.n, i)
			}
		}
		if p.Lent() != 1 {
			t.Fatalf("%d bytes: %d buffers lent after shrink; want 1", c.n, p.Lent())
		}
		p.put(s)
	}
	if n := p.Lent(); n != 0 {
		t.Fatalf("%d buffers still lent", n)
	}
}

// TestRawReaderShortRead: the reader of a carried connection, which
// borrows its buffer from the pool only once the socket is readable, gets
// each short write whether it waits first or the bytes came first, and
// io.EOF after the peer's FIN; it holds no buffer between reads.
func TestRawReaderShortRead(t *testing.T) {
	r, peer := tcpPair(t)
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	pool := NewPool()
	rr, err := newRawReader(r, pool)
	if err != nil {
		t.Fatal(err)
	}
	read := func(want string) {
		t.Helper()
		b, n, err := rr.read()
		if err != nil || string((*b)[:n]) != want {
			t.Fatalf("read = %v; want %q", err, want)
		}
		pool.put(b)
		if pool.Lent() != 0 {
			t.Fatalf("%d buffers lent between reads", pool.Lent())
		}
	}
	wrote := make(chan struct{})
	later := func(s string) {
		go func() {
			defer func() { wrote <- struct{}{} }()
			time.Sleep(50 * time.Millisecond) // most likely, the reader waits first
			peer.Write([]byte(s))
		}()
	}
	later("abc")
	read("abc")
	<-wrote
	peer.Write([]byte("def"))
	time.Sleep(50 * time.Millisecond) // most likely, the bytes are there first
	read("def")
	later("ghi")
	read("ghi")
	<-wrote
	peer.CloseWrite()
	if _, _, err := rr.read(); err != io.EOF {
		t.Fatalf("after the peer's FIN: %v; want io.EOF", err)
	}
	if pool.Lent() != 0 {
		t.Fatalf("%d buffers lent after EOF", pool.Lent())
	}
}
