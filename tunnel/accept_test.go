package tunnel

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
)

// failingListener fails its first fails Accepts with EMFILE, then accepts
// from the wrapped listener.
type failingListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, acceptErr(syscall.EMFILE)
	}
	return l.Listener.Accept()
}

// TestExitServeSurvivesEMFILE: Exit.Serve, given a plain listener that
// fails with EMFILE, waits and accepts again (before, Serve returned at the
// first such error and cut every session).
func TestExitServeSurvivesEMFILE(t *testing.T) {
	ks := testKeys()
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: echoBackend(t)}}
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln := &failingListener{Listener: loopback(t)}
	ln.fails.Store(3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- x.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	sess := dialSession(t, ln.Addr().String(), "")
	st := openRaw(t, sess, streamHeader{}.marshal())
	if s, msg := answer(t, st); s != StatusOK {
		t.Fatalf("stream after the EMFILE run: status %d %q", s, msg)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v", err)
	default:
	}
}

// TestPendingGateClosesAtOnce: with the exit's connections before their
// handshake at the gate's cap, a new one is closed at once, unanswered, and
// counted as refused; once the first is gone, an entry gets its session.
func TestPendingGateClosesAtOnce(t *testing.T) {
	ks := testKeys()
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: echoBackend(t)}}
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	x.acceptor.pending = listen.NewGate(1)
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	silent, err := net.Dial("tcp", ln.Addr().String()) // holds the one place until its hello timeout
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the silent connection to hold the place", func() bool { return x.acceptor.pending.Pending() == 1 })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(handshake.HelloTimeout / 2))
	if n, err := c.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("over the cap: read %d bytes, %v; want the connection closed at once", n, err)
	}
	if got := x.Stats().HandshakesRefused; got != 1 {
		t.Errorf("handshakes refused %d, want 1", got)
	}
	silent.Close()
	waitFor(t, "the place given back", func() bool { return x.acceptor.pending.Pending() == 0 })
	dialSession(t, ln.Addr().String(), "")
}

// acceptErr is err as Accept on a TCP listener returns it.
func acceptErr(err syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", err)}
}
