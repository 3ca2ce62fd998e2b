package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
)

// stoppableExit runs an exit with the test keys forwarding to backend, until
// stop (or the end of the test); stop returns once Serve has.
func stoppableExit(t *testing.T, backend string, drain time.Duration) (addr string, stop func()) {
	return stoppableExitOn(t, loopback(t), backend, drain)
}

// stoppableExitOn is stoppableExit on ln.
func stoppableExitOn(t *testing.T, ln net.Listener, backend string, drain time.Duration) (addr string, stop func()) {
	ks := testKeys()
	xs := ExitSettings{}
	xs.Services, xs.DrainTimeout = []ExitService{{Backend: backend}}, drain
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// TestStreamCrossingGoAwayMovesOn: a connection whose stream the entry
// opens while the exit's GoAway is on its way is refused by the exit's
// yamux (a RST, no ACK); the entry carries it on the next session, to
// another exit, with the bytes the application sent meanwhile, and the
// application sees a complete exchange.
func TestStreamCrossingGoAwayMovesOn(t *testing.T) {
	oldAddr, stopOld := stoppableExit(t, echoBackend(t), 10*time.Second)
	newAddr, _ := stoppableExit(t, echoBackend(t), time.Second)
	relay := newLink(t, oldAddr)
	lines := &logLines{}
	_, entryAddr := runEntry(t, relay.ln.Addr().String(), lines, nil, nil)
	roundTrip(t, entryAddr, []byte("a session with the old exit"))

	relay.pause()
	relay.target.Store(newAddr)
	stopped := make(chan struct{})
	go func() { stopOld(); close(stopped) }()
	relay.waitHeld(t, 1) // the GoAway: the old exit refuses new streams now

	app, err := net.Dial("tcp", entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	msg := []byte("sent before the entry knew")
	if _, err := app.Write(msg); err != nil {
		t.Fatal(err)
	}
	relay.waitHeld(t, 2) // the exit's RST for the stream
	relay.resume()

	app.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(app, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo: %q, %v", got, err)
	}
	more := []byte(" and after")
	app.Write(more)
	app.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(app)
	if err != nil || string(rest) != string(more) {
		t.Fatalf("rest of the echo: %q, %v", rest, err)
	}
	if n := len(lines.with("the exit refused the stream before accepting it (it is going away); carrying the connection on the next session")); n != 1 {
		t.Errorf("%d lines about carrying the stream again, want 1", n)
	}
	<-stopped
}

// TestFailoverToNextExit: with two exits, the entry keeps one session, to
// the first; when that exit goes away, new connections go to the second,
// and the entry says so, with the reason. When the second goes too, the
// first, back up at the same address, takes over.
func TestFailoverToNextExit(t *testing.T) {
	ln1 := loopback(t)
	addr1 := ln1.Addr().String()
	_, stop1 := stoppableExitOn(t, ln1, echoBackend(t), time.Second)
	addr2, stop2 := stoppableExit(t, echoBackend(t), time.Second)
	lines := &logLines{}
	n, entryAddr := runEntry(t, addr1, lines, func(c *EntrySettings) { c.Peers = append(c.Peers, addr2) }, nil)
	roundTrip(t, entryAddr, []byte("to the first exit"))
	if est := lines.with("session established"); len(est) != 1 || est[0]["peer"] != addr1 {
		t.Fatalf("session established lines %v, want one with peer %s", est, addr1)
	}

	stop1()
	roundTrip(t, entryAddr, []byte("to the second exit"))
	fo := lines.with("failed over to another exit")
	if len(fo) != 1 || fo[0]["peer"] != addr2 || fo[0]["previous_peer"] != addr1 || fo[0]["reason"] != "the exit is going away (GoAway)" {
		t.Fatalf("failover lines %v, want one from %s to %s because of GoAway", fo, addr1, addr2)
	}

	// The first exit comes back at its address; the second goes away.
	ln1b, err := net.Listen("tcp", addr1)
	if err != nil {
		t.Skipf("cannot listen at %s again: %v", addr1, err)
	}
	stoppableExitOn(t, ln1b, echoBackend(t), time.Second)
	stop2()
	roundTrip(t, entryAddr, []byte("back to the first exit"))
	if fo := lines.with("failed over to another exit"); len(fo) != 2 || fo[1]["peer"] != addr1 {
		t.Fatalf("failover lines %v, want a second one to %s", fo, addr1)
	}
	if got := n.books.Reconnects(); got != 2 {
		t.Errorf("%d sessions made again after none was up, want 2", got)
	}
}

// TestPeerNameResolvedAgain: a peer given by name stands for each of its
// addresses, and is looked up again when the entry reconnects.
func TestPeerNameResolvedAgain(t *testing.T) {
	ln2, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 here: %v", err)
	}
	_, port, _ := net.SplitHostPort(ln2.Addr().String())
	ln1, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		ln2.Close()
		t.Skipf("port %s taken on 127.0.0.1: %v", port, err)
	}
	_, stop1 := stoppableExitOn(t, ln1, echoBackend(t), time.Second)
	stoppableExitOn(t, ln2, echoBackend(t), time.Second)
	var lookups atomic.Int64
	lines := &logLines{}
	_, entryAddr := runEntry(t, "exits.test:"+port, lines, nil, func(n *Entry) {
		n.keeper.Lookup = func(_ context.Context, host string) ([]string, error) {
			if host != "exits.test" {
				t.Errorf("looked up %q", host)
			}
			lookups.Add(1)
			return []string{"127.0.0.1", "127.0.0.2"}, nil
		}
	})
	roundTrip(t, entryAddr, []byte("to the first address"))
	stop1()
	roundTrip(t, entryAddr, []byte("to the second address"))
	est := lines.with("session established")
	if len(est) != 2 || est[0]["addr"] != "127.0.0.1:"+port || est[1]["addr"] != "127.0.0.2:"+port || est[1]["peer"] != "exits.test:"+port {
		t.Fatalf("session established lines %v, want 127.0.0.1 then 127.0.0.2, both for exits.test", est)
	}
	if got := lookups.Load(); got != 2 {
		t.Errorf("%d lookups, want 2 (one per session)", got)
	}
}

// TestDrainDialsAcceptedStream: a stream the exit accepted before its
// drain began still gets its backend, even when the dial is under way as
// the drain begins.
func TestDrainDialsAcceptedStream(t *testing.T) {
	dialing := make(chan struct{})
	var once sync.Once
	a := startTuned(t, echoBackend(t), func(x *ExitSettings, _ *EntrySettings) { x.DrainTimeout = 10 * time.Second },
		func(x *Exit, _ *Entry) {
			x.fwd.dialer.ControlContext = func(ctx context.Context, _, _ string, _ syscall.RawConn) error {
				once.Do(func() { close(dialing) })
				select { // hold the dial until the drain cancels it, or 500 ms
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
				return nil
			}
		})
	app, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	msg := []byte("accepted before the drain")
	app.Write(msg)
	<-dialing
	stopped := make(chan struct{})
	go func() { a.stopExit(); close(stopped) }()
	app.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(app, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo during the drain: %q, %v", got, err)
	}
	app.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(app); err != nil || len(rest) != 0 {
		t.Fatalf("end of the echo: %q, %v", rest, err)
	}
	<-stopped
}

// TestSilentExitDelaysNoSession: an exit whose dial never answers (a host
// that is down, packets dropped) does not hold up the next one: the entry
// dials it while the first dial still waits, and abandons that dial once
// it has its session.
func TestSilentExitDelaysNoSession(t *testing.T) {
	addr, _ := stoppableExit(t, echoBackend(t), time.Second)
	const silent = "192.0.2.1:7000" // TEST-NET-1: never dialed, see dial below
	abandoned := make(chan error, 1)
	lines := &logLines{}
	_, entryAddr := runEntry(t, silent, lines, func(c *EntrySettings) {
		c.Peers = append(c.Peers, addr)
		c.DialTimeout = time.Minute
	}, func(n *Entry) {
		dial := n.keeper.Dial
		n.keeper.Dial = func(ctx context.Context, a string) (net.Conn, error) {
			if a != silent {
				return dial(ctx, a)
			}
			<-ctx.Done() // no answer, until the entry gives up on it
			select {
			case abandoned <- ctx.Err():
			default:
			}
			return nil, ctx.Err()
		}
	})
	roundTrip(t, entryAddr, []byte("through the exit that answers"))
	if est := lines.with("session established"); len(est) != 1 || est[0]["addr"] != addr {
		t.Fatalf("session established lines %v, want one with %s", est, addr)
	}
	select {
	case err := <-abandoned:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the silent exit's dial ended with %v, want it abandoned (context canceled)", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the silent exit's dial still runs 10s after the session is up")
	}
}

// TestReloadExitKeys: a reload must leave every exit a key to pin, its
// own or the shared set; an exit's own keys then pin it alone.
func TestReloadExitKeys(t *testing.T) {
	ks := testKeys()
	n, _ := runEntry(t, "127.0.0.1:1", nil, func(c *EntrySettings) { c.Peers = append(c.Peers, "127.0.0.1:2") }, nil)
	own, err := handshake.NewKeySet(&ks[0].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Reload(ks[0], nil, map[string]*handshake.KeySet{"127.0.0.1:1": own}); err == nil {
		t.Error("reload left the exit at 127.0.0.1:2 without a key")
	}
	shared, err := handshake.NewKeySet(&ks[1].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Reload(ks[0], shared, map[string]*handshake.KeySet{"127.0.0.1:1": own}); err != nil {
		t.Fatal(err)
	}
	p := n.keeper.Pins()
	if got := p.ForExit("127.0.0.1:1"); got.PeerKeys != own || got.PeerKey != nil {
		t.Errorf("exit with its own keys pins %v, want its own", got.PeerKeys.Fingerprints())
	}
	if got := p.ForExit("127.0.0.1:2"); got.PeerKeys != shared {
		t.Errorf("exit without its own keys pins %v, want the shared set", got.PeerKeys.Fingerprints())
	}
}

// TestReloadUnpinsExit: a reload that stops pinning the exit's key retires
// the session made with it (issue 17 item 5: before, it carried new
// connections on for as long as it lived, perhaps through whoever had that
// key): new connections go to a new session, and a connection open on the
// retired one goes on, so that the last step of a routine rotation cuts
// nothing. Here the exit still presents the unpinned key, so no new
// session can be made at all.
func TestReloadUnpinsExit(t *testing.T) {
	a := start(t, echoBackend(t))
	roundTrip(t, a.entryAddr, []byte("before"))
	old := a.entry.keeper.Current()
	if old == nil {
		t.Fatal("no session after a round trip")
	}
	open, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	echo := func(what string) error {
		open.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := open.Write([]byte(what)); err != nil {
			return err
		}
		_, err := io.ReadFull(open, make([]byte, len(what)))
		return err
	}
	if err := echo("x"); err != nil {
		t.Fatalf("echo on the open connection: %v", err)
	}
	other, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := handshake.NewKeySet(&other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.entry.Reload(testKeys()[0], pinned, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session with the unpinned exit retired", func() bool { return old.Retiring() })
	if s := a.entry.keeper.Current(); s == old {
		t.Error("the session with the unpinned exit is still current")
	}
	if err := echo("still"); err != nil {
		t.Errorf("the connection open on the retired session: %v", err)
	}
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a new connection was carried, with no exit whose key is pinned")
	}
}
