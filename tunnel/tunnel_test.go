package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// backend serves every connection on a loopback port with handle, which
// must close it; it stops in t.Cleanup.
func backend(t testing.TB, handle func(*net.TCPConn)) string {
	ln := listen(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

// echoBackend echoes every connection, half-close included.
func echoBackend(t testing.TB) string {
	return backend(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	})
}

type agents struct {
	entryAddr string
	exitAddr  string
	stopExit  func()
	exit      *Exit
	entry     *Entry
}

// start runs an exit forwarding to backend and an entry pointing at it.
func start(t testing.TB, backend string) *agents {
	return startWith(t, backend, nil)
}

// startWith is start with a hook to adjust the exit before it serves.
func startWith(t testing.TB, backend string, adjust func(*config.Exit, *config.Entry)) *agents {
	return startStall(t, backend, adjust, 0)
}

// startStall is startWith with a write-stall timeout for both agents
// (zero keeps the default).
func startStall(t testing.TB, backend string, adjust func(*config.Exit, *config.Entry), stall time.Duration) *agents {
	t.Helper()
	ks := testKeys()
	entryKey, exitKey := ks[0], ks[1]
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)

	xs := config.DefaultExit()
	xs.Forward, xs.Key, xs.AuthorizedKeys = backend, "unused", "unused"
	xs.DrainTimeout = time.Second
	xs.DialTimeout = time.Second
	ns := config.DefaultEntry()
	ns.Key, ns.PeerKey = "unused", "unused"
	ns.DialTimeout, ns.DrainTimeout = 2*time.Second, time.Second

	if adjust != nil {
		adjust(&xs, &ns)
	}
	a := &agents{}
	exitLn := listen(t)
	a.exitAddr = exitLn.Addr().String()
	ns.Peer = a.exitAddr
	runExit := func(ln net.Listener) func() {
		x, err := newExitForTest(xs, exitKey, &entryKey.PublicKey, log)
		if err != nil {
			t.Fatal(err)
		}
		a.exit = x
		if stall > 0 {
			x.writeStall = stall
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { x.Serve(ctx, ln); close(done) }()
		return func() { cancel(); <-done }
	}
	a.stopExit = runExit(exitLn)
	t.Cleanup(func() { a.stopExit() })

	n, err := NewEntry(EntryConfig{Settings: ns, Key: entryKey, PeerKey: &exitKey.PublicKey}, log)
	if err != nil {
		t.Fatal(err)
	}
	a.entry = n
	if stall > 0 {
		n.writeStall = stall
	}
	entryLn := listen(t)
	a.entryAddr = entryLn.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Serve(ctx, entryLn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// newExitForTest builds an exit with in-memory keys (Validate wants files).
func newExitForTest(s config.Exit, key *rsa.PrivateKey, entry *rsa.PublicKey, log zerolog.Logger) (*Exit, error) {
	return NewExit(ExitConfig{Settings: s, Key: key, Authorized: handshake.NewKeySet(entry)}, log)
}

func roundTrip(t *testing.T, addr string, payload []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite() // half-close: the reply must still come
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("echo of %d bytes came back as %d different bytes", len(payload), len(got))
	}
}

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
	ln := listen(t)
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
	ln, err := net.Listen("tcp", a.exitAddr)
	if err != nil {
		t.Fatalf("re-listen on %s: %v", a.exitAddr, err)
	}
	ks := testKeys()
	xs := config.DefaultExit()
	xs.Forward = echoBackend(t)
	xs.DrainTimeout = time.Second
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	a.stopExit = func() { cancel(); <-done }
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

// recConn counts the records a frame.Conn sends.
func TestMuxConnOneRecordPerFrame(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go io.Copy(io.Discard, b)
	var k frame.Keys
	fc := frame.New(a, k, nil)
	defer fc.Close()
	m := &muxConn{Conn: fc}
	fc.SendFinished()
	before := fc.Stats().RecordsSent
	hdr := []byte{0, yamuxTypeData, 0, 0, 0, 0, 0, 1, 0, 0, 0x10, 0} // body of 4096 bytes
	body := bytes.Repeat([]byte{1}, 4096)
	for range 10 {
		m.Write(hdr)
		m.Write(body)
	}
	ping := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7} // ping: no body
	m.Write(ping)
	if got := fc.Stats().RecordsSent - before; got != 11 {
		t.Fatalf("10 data frames and a ping became %d records, want 11", got)
	}
}
