package tunnel

// The in-process rig the tests share: loopback listeners and backends, an
// exit and an entry started together (start and its variants, or
// startServices), and a link between them that the test controls.

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/handshake"
)

func loopback(t testing.TB) net.Listener {
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
	ln := loopback(t)
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
func startWith(t testing.TB, backend string, adjust func(*ExitSettings, *EntrySettings)) *agents {
	return startStall(t, backend, adjust, 0)
}

// startStall is startWith with a write-stall timeout for both agents
// (zero keeps the default).
func startStall(t testing.TB, backend string, adjust func(*ExitSettings, *EntrySettings), stall time.Duration) *agents {
	t.Helper()
	return startTuned(t, backend, adjust, func(x *Exit, n *Entry) {
		if stall > 0 {
			x.fwd.writeStall, n.writeStall = stall, stall
		}
	})
}

// startTuned is startWith with a hook to adjust the agents themselves
// before they serve.
func startTuned(t testing.TB, backend string, adjust func(*ExitSettings, *EntrySettings), tune func(*Exit, *Entry)) *agents {
	t.Helper()
	ks := testKeys()
	entryKey, exitKey := ks[0], ks[1]
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)

	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: backend}}
	xs.DrainTimeout = time.Second
	xs.DialTimeout = time.Second
	ns := EntrySettings{}
	ns.DialTimeout, ns.DrainTimeout = 2*time.Second, time.Second

	if adjust != nil {
		adjust(&xs, &ns)
	}
	a := &agents{}
	exitLn := loopback(t)
	a.exitAddr = exitLn.Addr().String()
	ns.Peers = []string{a.exitAddr}
	x, err := newExitForTest(xs, exitKey, &entryKey.PublicKey, log)
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewEntry(EntryConfig{Settings: ns, Key: entryKey, PeerKey: &exitKey.PublicKey}, log)
	if err != nil {
		t.Fatal(err)
	}
	a.exit, a.entry = x, n
	if tune != nil {
		tune(x, n)
	}
	xctx, xcancel := context.WithCancel(context.Background())
	xdone := make(chan struct{})
	go func() { x.Serve(xctx, exitLn); close(xdone) }()
	a.stopExit = func() { xcancel(); <-xdone }
	t.Cleanup(func() { a.stopExit() })

	entryLn := loopback(t)
	a.entryAddr = entryLn.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Serve(ctx, entryLn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// restartExit serves a new exit, forwarding to backend, on the address of
// the one that a.stopExit has stopped; a.exit and a.stopExit are the new
// one's from then on.
func (a *agents) restartExit(t testing.TB, backend string) {
	t.Helper()
	ln, err := net.Listen("tcp", a.exitAddr)
	if err != nil {
		t.Fatalf("re-listen on %s: %v", a.exitAddr, err)
	}
	ks := testKeys()
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: backend}}
	xs.DrainTimeout = time.Second
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	a.exit, a.stopExit = x, func() { cancel(); <-done }
}

// startServices runs an exit with the settings xs (its timeouts made
// short) and an entry that serves lns towards it, with the keys of
// testKeys (the entry's first); both stop in t.Cleanup.
func startServices(t *testing.T, xs ExitSettings, lns []ServiceListener) (*Exit, *Entry) {
	t.Helper()
	ks := testKeys()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	xs.DrainTimeout, xs.DialTimeout = time.Second, time.Second
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, log)
	if err != nil {
		t.Fatal(err)
	}
	exitLn := loopback(t)
	ns := EntrySettings{}
	ns.Peers, ns.DialTimeout, ns.DrainTimeout = []string{exitLn.Addr().String()}, 2*time.Second, time.Second
	n, err := NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	xdone, ndone := make(chan struct{}), make(chan struct{})
	go func() { x.Serve(ctx, exitLn); close(xdone) }()
	go func() { n.ServeListeners(ctx, lns); close(ndone) }()
	t.Cleanup(func() { cancel(); <-ndone; <-xdone })
	return x, n
}

// newExitForTest builds an exit with in-memory keys (Validate wants files).
func newExitForTest(s ExitSettings, key *rsa.PrivateKey, entry *rsa.PublicKey, log zerolog.Logger) (*Exit, error) {
	auth, err := handshake.NewKeySet(entry)
	if err != nil {
		return nil, err
	}
	return NewExit(ExitConfig{Settings: s, Key: key, Authorized: auth}, log)
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

// link stands between entries and exits: it forwards each connection to
// the address it holds at accept time (a service address that moves to a
// new exit), record by record, and can hold back what the exits send (a
// link whose latency the test controls). The tests' one relay.
type link struct {
	ln     net.Listener
	target atomic.Value // string
	conns  sync.Map     // net.Conn: both sides of each relayed connection

	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	held   int // records from an exit that arrived while paused
}

func newLink(t *testing.T, target string) *link {
	r := &link{ln: loopback(t)}
	r.cond = sync.NewCond(&r.mu)
	r.target.Store(target)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		r.ln.Close()
		r.resume()
		r.cut()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", r.target.Load().(string))
			if err != nil {
				c.Close()
				continue
			}
			r.conns.Store(c, nil)
			r.conns.Store(up, nil)
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(up, c)
				up.Close()
				c.Close()
			}()
			go func() {
				defer wg.Done()
				r.back(c, up)
				c.Close()
				up.Close()
			}()
		}
	}()
	return r
}

// back copies the exit's records to the entry, holding them while paused.
func (r *link) back(entry, exit net.Conn) {
	var hdr [4]byte
	if _, err := io.ReadFull(exit, hdr[:]); err != nil {
		return
	}
	// The first bytes are the handshake (type u8 | length u24 | body),
	// never held; records follow.
	body := make([]byte, int(binary.BigEndian.Uint32(hdr[:])&0xffffff))
	if _, err := io.ReadFull(exit, body); err != nil {
		return
	}
	if _, err := entry.Write(append(hdr[:], body...)); err != nil {
		return
	}
	var queue [][]byte
	ended := false
	done := make(chan struct{})
	go func() { // the entry's side: sends what is queued unless paused
		defer close(done)
		r.mu.Lock()
		defer r.mu.Unlock()
		for {
			for !ended && (r.paused || len(queue) == 0) {
				r.cond.Wait()
			}
			if len(queue) == 0 {
				return
			}
			rec := queue[0]
			queue = queue[1:]
			r.mu.Unlock()
			_, err := entry.Write(rec)
			r.mu.Lock()
			if err != nil {
				return
			}
		}
	}()
	for {
		if _, err := io.ReadFull(exit, hdr[:]); err != nil {
			break
		}
		rec := make([]byte, 4+binary.BigEndian.Uint32(hdr[:]))
		copy(rec, hdr[:])
		if _, err := io.ReadFull(exit, rec[4:]); err != nil {
			break
		}
		r.mu.Lock()
		if r.paused {
			r.held++
		}
		queue = append(queue, rec)
		r.cond.Broadcast()
		r.mu.Unlock()
	}
	r.mu.Lock()
	ended = true
	r.cond.Broadcast()
	r.mu.Unlock()
	<-done
}

// cuttingRelay relays connections to target and resets each after
// lifetime, as a middlebox that drops its state does; it returns its
// address and the count of connections it accepted.
func cuttingRelay(t *testing.T, target string, lifetime time.Duration) (string, *atomic.Int64) {
	return acceptCounter(t, func(c net.Conn) {
		defer c.Close()
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(up, c)
		go io.Copy(c, up)
		time.Sleep(lifetime)
		c.(*net.TCPConn).SetLinger(0)
	})
}

// cut resets every connection relayed so far, both ways, as a middlebox
// that loses its state does.
func (r *link) cut() {
	r.conns.Range(func(k, _ any) bool {
		if tc, ok := k.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		k.(net.Conn).Close()
		r.conns.Delete(k)
		return true
	})
}

func (r *link) pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused, r.held = true, 0
}

func (r *link) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused = false
	r.cond.Broadcast()
}

// waitHeld waits until n records are held, for up to 10 s.
func (r *link) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.AfterFunc(10*time.Second, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.cond.Broadcast()
	})
	defer deadline.Stop()
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.held < n {
		if time.Since(start) >= 10*time.Second {
			t.Fatalf("%d records held after 10s, want %d", r.held, n)
		}
		r.cond.Wait()
	}
}
