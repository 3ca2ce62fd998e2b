package tunnel

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdleConnectionsHoldNoBuffers: connections that have moved data both
// ways and now wait hold no copy buffer on either agent, and a burst
// borrows them only while it moves.
func TestIdleConnectionsHoldNoBuffers(t *testing.T) {
	a := start(t, echoBackend(t))
	var conns []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", a.entryAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB each
	for _, c := range conns {
		go c.Write(msg)
	}
	got := make([]byte, len(msg))
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: %v", err)
		}
	}
	waitFor(t, "copy buffers given back by idle connections", func() bool {
		return a.entry.pool.lent.Load() == 0 && a.exit.pool.lent.Load() == 0
	})
	// Still usable after waiting without buffers.
	for _, c := range conns {
		c.Write([]byte("again"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "again" {
			t.Fatalf("after idling: %q, %v", buf, err)
		}
	}
}

// TestResetTravelsToBackend: an application that aborts its connection
// (SO_LINGER 0) makes the backend's connection abort too, not end cleanly.
func TestResetTravelsToBackend(t *testing.T) {
	ready, result := make(chan struct{}), make(chan error, 1)
	addr := backend(t, func(c *net.TCPConn) {
		defer c.Close()
		buf := make([]byte, 5)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			result <- err
			return
		}
		close(ready)
		_, err := c.Read(buf)
		result <- err
	})
	a := start(t, addr)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	select {
	case <-ready: // the backend is connected and has the bytes
	case err := <-result:
		t.Fatalf("backend: %v", err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	if err := <-result; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("backend read after the application's reset: %v; want ECONNRESET", err)
	}
}

// TestResetTravelsToApplication: a backend that aborts its connection makes
// the application's connection abort too.
func TestResetTravelsToApplication(t *testing.T) {
	addr := backend(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("bye"))
		time.Sleep(100 * time.Millisecond)
		c.SetLinger(0)
		c.Close()
	})
	a := start(t, addr)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if string(got) != "bye" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("application read %q, %v; want \"bye\" and ECONNRESET", got, err)
	}
}

// deadlineRecorder records the write deadlines it is given.
type deadlineRecorder struct{ set []time.Time }

func (r *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	r.set = append(r.set, t)
	return nil
}

// TestWriteDeadlineMovesOnceHalfUsed: a deadline is moved only once half of
// it has passed, and then to a whole stall from now.
func TestWriteDeadlineMovesOnceHalfUsed(t *testing.T) {
	var d writeDeadline
	var r deadlineRecorder
	const stall = 40 * time.Millisecond
	d.arm(&r, stall)
	d.arm(&r, stall)
	if len(r.set) != 1 {
		t.Fatalf("two writes in a row set the deadline %d times; want 1", len(r.set))
	}
	time.Sleep(stall/2 + 5*time.Millisecond)
	before := time.Now()
	d.arm(&r, stall)
	if len(r.set) != 2 || r.set[1].Before(before.Add(stall)) {
		t.Fatalf("after half the stall: deadlines %v; want a second one at least %v from now", r.set, stall)
	}
}

// TestBufPoolShrink: a short read moves to the smallest size class that
// holds it, a long one keeps its buffer, and every buffer goes back to the
// class it came from.
func TestBufPoolShrink(t *testing.T) {
	p := newBufPool()
	for _, c := range []struct{ n, wantCap int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 32 << 10}, {32 << 10, 32 << 10}, {32<<10 + 1, copyBufSize}, {copyBufSize, copyBufSize},
	} {
		b := p.get()
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
		p.put(s)
	}
	if n := p.lent.Load(); n != 0 {
		t.Fatalf("%d buffers still lent", n)
	}
}

// TestUnackedKeepRelease: the conn -> stream goroutine keeps chunks while
// the other direction releases on the exit's status; under -race, the two
// must not touch what is kept unlocked.
func TestUnackedKeepRelease(t *testing.T) {
	mc := &muxConn{}
	mc.fins.watch(1)
	for range 3000 {
		var u unacked
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 50 {
				u.keep(mc, 1, []byte("chunk"))
			}
		}()
		u.release()
		<-done
		if u.buf != nil {
			t.Fatalf("kept %d bytes after release", len(u.buf))
		}
	}
}
