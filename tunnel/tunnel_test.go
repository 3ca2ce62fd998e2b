package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/handshake"
)

func TestMain(m *testing.M) {
	if os.Getenv(endsChildEnv) != "" {
		os.Exit(runEndsChild())
	}
	goleak.VerifyTestMain(m)
}

var testKeys = sync.OnceValue(func() [2]*rsa.PrivateKey {
	var ks [2]*rsa.PrivateKey
	for i := range ks {
		k, err := handshake.GenerateKey(handshake.MinKeyBits)
		if err != nil {
			panic(err)
		}
		ks[i] = k
	}
	return ks
})

func TestEchoThroughTunnel(t *testing.T) {
	a := start(t, echoBackend(t))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 1+i*37_000)
			rand.Read(p)
			roundTrip(t, a.entryAddr, p)
		}()
	}
	wg.Wait()
}

func TestBackendDownClosesApp(t *testing.T) {
	ln := loopback(t)
	dead := ln.Addr().String()
	ln.Close()
	a := start(t, dead)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello?"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 10))
	if n != 0 || err == nil {
		t.Fatalf("read %d bytes, err %v; want the connection closed", n, err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection not closed within 5s")
	}
}

func TestExitRestart(t *testing.T) {
	a := start(t, echoBackend(t))
	roundTrip(t, a.entryAddr, []byte("before"))
	a.stopExit()
	a.restartExit(t, echoBackend(t))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", a.entryAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("after"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) == "after" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("entry did not reconnect to the restarted exit within 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDrainDeliversTail: the exit shuts down (drains, then closes the
// session) while the entry still holds reply bytes a slow application has
// not read. The application must get every byte and a clean end, not a
// reset: the stream's FIN arrived before the session ended.
func TestDrainDeliversTail(t *testing.T) {
	const size = 2 << 20
	reply := backend(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		c.Write(make([]byte, size))
		c.Close()
	})
	a := start(t, reply)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(32 << 10) // slow enough that the entry still holds data when the session ends
	c.Write([]byte("request"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { a.stopExit(); close(stopped) }()
	time.Sleep(300 * time.Millisecond) // the exit finishes its side and drains
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != size-1 {
		t.Fatalf("after the exit's shutdown: read %d of %d bytes, err %v; want all and a clean end", n, size-1, err)
	}
	<-stopped
	a.stopExit = func() {}
}

// TestRejectedKeyFailsFast: with a key the exit does not accept, an
// application connection is closed at once, not after the dial timeout.
func TestRejectedKeyFailsFast(t *testing.T) {
	a := startWith(t, echoBackend(t), nil)
	other, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	ns := EntrySettings{}
	ns.Peers, ns.DialTimeout = []string{a.exitAddr}, 5*time.Second
	n, err := NewEntry(EntryConfig{Settings: ns, Key: other, PeerKey: &testKeys()[1].PublicKey}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Serve(ctx, ln); close(done) }()
	defer func() { cancel(); <-done }()
	for i := range 3 {
		start := time.Now()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			if errors.Is(err, syscall.ECONNRESET) {
				continue // reset before the dial even returned: closed at once
			}
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, rerr := c.Read(make([]byte, 1))
		c.Close()
		if rerr == nil {
			t.Fatal("application connection read data with a rejected key")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("connection %d closed after %v; want well under the 5s dial timeout", i, d)
		}
	}
}

// TestGoAwayMovesToNewSession: while an exit drains an open stream, new
// application connections go to a new session (here, through the relay,
// to a new exit) at once, and the old stream still finishes.
func TestGoAwayMovesToNewSession(t *testing.T) {
	ks := testKeys()
	newExit := func(drain time.Duration) (addr string, stop func()) {
		xs := ExitSettings{}
		xs.Services, xs.DrainTimeout = []ExitService{{Backend: echoBackend(t)}}, drain
		x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		ln := loopback(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { x.Serve(ctx, ln); close(done) }()
		var once sync.Once
		stop = func() { once.Do(func() { cancel(); <-done }) }
		t.Cleanup(stop)
		return ln.Addr().String(), stop
	}
	oldAddr, stopOld := newExit(20 * time.Second)
	relay := newLink(t, oldAddr)

	ns := EntrySettings{}
	ns.Peers = []string{relay.ln.Addr().String()}
	n, err := NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	entryLn := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Serve(ctx, entryLn); close(done) }()
	defer func() { cancel(); <-done }()
	entryAddr := entryLn.Addr().String()

	held, err := net.Dial("tcp", entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.Write([]byte("held "))
	held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(held, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}

	newAddr, _ := newExit(time.Second)
	relay.target.Store(newAddr)
	stopped := make(chan struct{})
	go func() { stopOld(); close(stopped) }() // GoAway, then drain: waits for the held stream

	// yamux's GoAway names no last stream: a stream opened in the round
	// trip before the entry sees it is refused. Wait for the new session.
	for deadline := time.Now().Add(10 * time.Second); n.Stats().Sessions < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no second session 10s after GoAway: %+v", n.Stats())
		}
	}
	roundTrip(t, entryAddr, []byte("new connection while the old exit drains"))
	select {
	case <-stopped:
		t.Fatal("old exit stopped before its held stream ended")
	default:
	}
	held.Write([]byte("tail"))
	held.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(held)
	if err != nil || string(got) != "tail" {
		t.Fatalf("held stream: %q, %v", got, err)
	}
	<-stopped
}
