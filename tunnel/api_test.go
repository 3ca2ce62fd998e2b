package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
)

// otherKey is an authorized entry key that is not the test entry's.
var otherKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		panic(err)
	}
	return k
})

// apiRig is an exit and an entry that only Runs, for the Go API.
type apiRig struct {
	exit      *Exit
	entry     *Entry
	exitLogs  *logBuffer
	entryLogs *logBuffer
	stopExit  func()
	stopEntry func() error // cancels Run and returns its error
}

// runAPI runs an exit that authorizes the test entry's key and otherKey's,
// and an entry that Runs against it; adjust may change their settings
// (no service: no default service), tune the exit before it serves.
// Both stop in t.Cleanup.
func runAPI(t *testing.T, adjust func(*ExitSettings, *EntrySettings), tune func(*Exit)) *apiRig {
	t.Helper()
	ks := testKeys()
	xs := ExitSettings{}
	xs.DrainTimeout, xs.DialTimeout = time.Second, time.Second
	ns := EntrySettings{}
	ns.DialTimeout, ns.DrainTimeout = 2*time.Second, time.Second
	if adjust != nil {
		adjust(&xs, &ns)
	}
	auth, err := handshake.NewKeySet(&ks[0].PublicKey, &otherKey().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	r := &apiRig{exitLogs: &logBuffer{}, entryLogs: &logBuffer{}}
	r.exit, err = NewExit(ExitConfig{Settings: xs, Key: ks[1], Authorized: auth}, zerolog.New(r.exitLogs))
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(r.exit)
	}
	ln := loopback(t)
	xctx, xcancel := context.WithCancel(context.Background())
	xdone := make(chan struct{})
	go func() { r.exit.Serve(xctx, ln); close(xdone) }()
	r.stopExit = func() { xcancel(); <-xdone }
	t.Cleanup(r.stopExit)

	if len(ns.Peers) == 0 {
		ns.Peers = []string{ln.Addr().String()}
	}
	r.entry, err = NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, zerolog.New(r.entryLogs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.entry.Run(ctx) }()
	var once sync.Once
	var runErr error
	r.stopEntry = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { r.stopEntry() })
	return r
}

// dial is DialContext with a bound of 10 s.
func (r *apiRig) dial(t *testing.T, service string) (*Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := r.entry.DialContext(ctx, "tcp", service)
	if err != nil {
		return nil, err
	}
	return c.(*Conn), nil
}

// statusOf returns the status of the exit's refusal in err, failing the
// test if err is none.
func statusOf(t *testing.T, err error) *StatusError {
	t.Helper()
	var se *StatusError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a *StatusError", err)
	}
	return se
}

// serveAccepted accepts on l until it is closed, handing each Conn to
// handle in its own goroutine; it stops in t.Cleanup.
func serveAccepted(t *testing.T, l *Listener, handle func(*Conn)) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c.(*Conn))
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
}

// TestDialServices: DialContext reaches a forwarded service and one a
// Listener serves; an unknown service, a service the access rules refuse
// (forwarded or served by a Listener) and bad arguments are errors that
// say so, and a refused stream never reaches the backend or Accept.
func TestDialServices(t *testing.T) {
	var dbDials atomic.Int64
	db := namedBackend(t, "DB", &dbDials)
	otherFP := handshake.Fingerprint(&otherKey().PublicKey)
	entryFP := handshake.Fingerprint(&testKeys()[0].PublicKey)
	exitFP := handshake.Fingerprint(&testKeys()[1].PublicKey)
	var accepted atomic.Int64
	var open, secret *Listener
	r := runAPI(t, func(x *ExitSettings, _ *EntrySettings) {
		x.Services = []ExitService{{Name: "echo", Backend: echoBackend(t)}, {Name: "db", Backend: db}}
		x.Access = []AccessRule{{Service: "db", Keys: []string{otherFP}}, {Service: "secret", Keys: []string{otherFP}}}
	}, func(x *Exit) {
		var err error
		if open, err = x.Listen("open"); err != nil {
			t.Fatal(err)
		}
		if secret, err = x.Listen("secret"); err != nil {
			t.Fatal(err)
		}
	})
	hello := func(c *Conn) {
		accepted.Add(1)
		io.WriteString(c, "hello "+c.Service()+" "+c.PeerFingerprint()+" "+c.Origin())
		c.Close()
	}
	serveAccepted(t, open, hello)
	serveAccepted(t, secret, hello)

	c, err := r.dial(t, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if c.Service() != "echo" || c.PeerFingerprint() != exitFP {
		t.Errorf("conn to echo: Service %q, PeerFingerprint %q; want echo, %s", c.Service(), c.PeerFingerprint(), exitFP)
	}
	io.WriteString(c, "ping")
	c.CloseWrite()
	if b, err := io.ReadAll(c); string(b) != "ping" || err != nil {
		t.Errorf("echo: read %q, %v", b, err)
	}
	c.Close()

	c, err = r.dial(t, "open")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); string(b) != "hello open "+entryFP+" " || err != nil {
		t.Errorf("Listener's service: read %q, %v; want its service, the entry's key and no origin", b, err)
	}
	c.Close()

	_, err = r.dial(t, "nope")
	se := statusOf(t, err)
	if se.Status != StatusUnknownService || se.Service != "nope" ||
		!strings.Contains(se.Message, "echo") || !strings.Contains(se.Message, "open") ||
		strings.Contains(se.Message, "db") || strings.Contains(se.Message, "secret") {
		t.Errorf("unknown service: %v; want status 1 listing echo and open, the services this key may reach, only", err)
	}

	for _, svc := range []string{"db", "secret"} {
		_, err = r.dial(t, svc)
		if se := statusOf(t, err); se.Status != StatusRefused || !strings.Contains(se.Message, entryFP) || !strings.Contains(se.Message, `"`+svc+`"`) {
			t.Errorf("service %s, restricted to another key: %v; want status 3 naming the key and the service", svc, err)
		}
	}
	refusedLines := 0
	for _, line := range r.entryLogs.lines(t) {
		if line["message"] == "the exit refused a stream dialed by the program" && line["status"] == 3.0 {
			refusedLines++
			if line["fingerprint"] != entryFP || line["service"] != "db" && line["service"] != "secret" {
				t.Errorf("entry's log line for the refusal: %v; want the key and the service", line)
			}
		}
	}
	if refusedLines != 2 {
		t.Errorf("entry logged %d refusals by policy, want 2", refusedLines)
	}
	if dbDials.Load() != 0 || accepted.Load() != 1 {
		t.Errorf("refused streams reached a backend (%d dials) or Accept (%d, want the 1 of service open)", dbDials.Load(), accepted.Load())
	}

	for _, tc := range []struct{ network, service, want string }{
		{"udp", "echo", `network "udp"`},
		{"tcp", "a b", "service name"},
	} {
		if _, err := r.entry.DialContext(context.Background(), tc.network, tc.service); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("DialContext(%q, %q): %v; want an error about %s", tc.network, tc.service, err, tc.want)
		}
	}
}

// TestDialNoSession: without a session DialContext fails with
// ErrNoSession, saying why: the entry is not running, the exit cannot be
// reached, the exit rejects the entry's key, or the caller gave up.
func TestDialNoSession(t *testing.T) {
	ks := testKeys()
	newEntry := func(peer string) *Entry {
		ns := EntrySettings{}
		ns.Peers, ns.DialTimeout = []string{peer}, 300*time.Millisecond
		n, err := NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	run := func(n *Entry) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { n.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	check := func(what string, n *Entry, ctx context.Context, want ...any) {
		t.Helper()
		_, err := n.DialContext(ctx, "tcp", "")
		if !errors.Is(err, ErrNoSession) {
			t.Errorf("%s: %v; want ErrNoSession", what, err)
			return
		}
		for _, w := range want {
			switch w := w.(type) {
			case string:
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %v; want it to say %q", what, err, w)
				}
			case error:
				if !errors.Is(err, w) {
					t.Errorf("%s: %v; want it to wrap %v", what, err, w)
				}
			}
		}
	}

	deadPort := loopback(t)
	dead := deadPort.Addr().String()
	deadPort.Close()
	check("entry not running", newEntry(dead), context.Background(), "not running")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	check("entry not running, context canceled", newEntry(dead), canceled, context.Canceled)

	n := newEntry(dead)
	run(n)
	check("exit unreachable", n, context.Background(), "connection refused")

	// An exit that does not authorize the entry's key.
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: echoBackend(t)}}
	x, err := newExitForTest(xs, ks[1], &otherKey().PublicKey, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln := loopback(t)
	xctx, xcancel := context.WithCancel(context.Background())
	xdone := make(chan struct{})
	go func() { x.Serve(xctx, ln); close(xdone) }()
	t.Cleanup(func() { xcancel(); <-xdone })
	n = newEntry(ln.Addr().String())
	run(n)
	check("key not authorized", n, context.Background(), handshake.ErrUnknownKey)
}

// TestRunDrainsDialed: once Run's context is done, DialContext refuses,
// and Run waits for the connections it returned before it ends the
// session; Run runs once at a time.
func TestRunDrainsDialed(t *testing.T) {
	r := runAPI(t, func(x *ExitSettings, n *EntrySettings) {
		x.Services = []ExitService{{Backend: echoBackend(t)}}
		n.DrainTimeout = time.Minute
	}, nil)
	c, err := r.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.entry.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "running already") {
		t.Errorf("a second Run: %v; want an error", err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- r.stopEntry() }()
	r.entryLogs.wait(t, "shutting down: draining open connections")
	if _, err := r.dial(t, ""); !errors.Is(err, ErrNoSession) || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("dial during the drain: %v; want ErrNoSession, shutting down", err)
	}
	// The drain waits for c, which still works.
	io.WriteString(c, "still here")
	c.CloseWrite()
	if b, err := io.ReadAll(c); string(b) != "still here" || err != nil {
		t.Errorf("during the drain: read %q, %v", b, err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) while a dialed connection was open", err)
	default:
	}
	c.Close()
	if err := <-stopped; err != nil {
		t.Errorf("Run: %v", err)
	}
	if line := r.entryLogs.wait(t, "connection closed"); line["bytes_to_backend"] != 10.0 || line["aborted"] != nil {
		t.Errorf("connection closed: %v; want 10 bytes each way, not aborted", line)
	}
}

// TestListener: Listen refuses a service that is forwarded or listened
// already; after Close, Accept fails with net.ErrClosed and the service's
// streams, waiting or new, are answered status 2, until Listen again.
func TestListener(t *testing.T) {
	r := runAPI(t, func(x *ExitSettings, _ *EntrySettings) {
		x.Services = []ExitService{{Backend: echoBackend(t)}}
	}, nil)
	for _, svc := range []string{"", "default", "bad name"} {
		if _, err := r.exit.Listen(svc); err == nil {
			t.Errorf("Listen(%q): no error", svc)
		}
	}
	l, err := r.exit.Listen("svc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.exit.Listen("svc"); err == nil || !strings.Contains(err.Error(), "has a Listener already") {
		t.Errorf("Listen twice: %v", err)
	}

	// A stream waiting for Accept when the Listener closes.
	waiting := make(chan error, 1)
	go func() {
		_, err := r.dial(t, "svc")
		waiting <- err
	}()
	waitFor(t, "a stream waits for Accept", func() bool { return len(l.queue) == 1 })
	accepting := make(chan error, 1)
	l.Close()
	go func() {
		_, err := l.Accept()
		accepting <- err
	}()
	if err := <-accepting; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v; want net.ErrClosed", err)
	}
	if se := statusOf(t, <-waiting); se.Status != StatusUnreachable || !strings.Contains(se.Message, "closed its listener") {
		t.Errorf("stream waiting at Close: %v; want status 2", se)
	}
	_, err = r.dial(t, "svc")
	if se := statusOf(t, err); se.Status != StatusUnreachable {
		t.Errorf("stream after Close: %v; want status 2", se)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}

	l, err = r.exit.Listen("svc")
	if err != nil {
		t.Fatalf("Listen after Close: %v", err)
	}
	serveAccepted(t, l, func(c *Conn) {
		io.WriteString(c, "again")
		c.Close()
	})
	c, err := r.dial(t, "svc")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); string(b) != "again" || err != nil {
		t.Errorf("after Listen again: read %q, %v", b, err)
	}
	c.Close()
}

// TestListenerBacklog: a stream that finds the backlog full is answered
// busy at once, rather than buffered; one that waits longer than the dial
// timeout is answered busy too.
func TestListenerBacklog(t *testing.T) {
	var l *Listener
	r := runAPI(t, func(x *ExitSettings, _ *EntrySettings) {
		x.DialTimeout = 500 * time.Millisecond
	}, func(x *Exit) {
		x.fwd.backlog = 1
		var err error
		if l, err = x.Listen("slow"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { l.Close() })
	first := make(chan error, 1)
	go func() {
		_, err := r.dial(t, "slow")
		first <- err
	}()
	waitFor(t, "a stream waits for Accept", func() bool { return len(l.queue) == 1 })
	_, err := r.dial(t, "slow")
	if se := statusOf(t, err); se.Status != StatusBusy || !strings.Contains(se.Message, "waiting for the program") {
		t.Errorf("backlog full: %v; want status 4", se)
	}
	if se := statusOf(t, <-first); se.Status != StatusBusy || !strings.Contains(se.Message, "did not accept") {
		t.Errorf("not accepted in time: %v; want status 4", se)
	}
	if s := r.exit.Stats().Services["slow"]; s.StreamsRefused != 2 || s.Streams != 0 {
		t.Errorf("exit's counters for the service: %+v; want 2 refused, none open", s)
	}
}

// TestConnEnds: a Conn ends as a TCP connection does: half-close carried
// both ways, EOF only after the peer's FIN, a reset when data is left
// unread at Close, net.ErrClosed for calls after Close or blocked at Close,
// deadlines as timeouts, and an error, not EOF, when the session is lost.
func TestConnEnds(t *testing.T) {
	conns := make(chan *Conn, 4)
	var l *Listener
	r := runAPI(t, nil, func(x *Exit) {
		var err error
		if l, err = x.Listen(""); err != nil {
			t.Fatal(err)
		}
	})
	serveAccepted(t, l, func(c *Conn) { conns <- c })

	// Half-close, each way.
	c, err := r.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	p := <-conns
	io.WriteString(c, "request")
	c.CloseWrite()
	if b, err := io.ReadAll(p); string(b) != "request" || err != nil {
		t.Errorf("exit side: read %q, %v; want the request, then EOF", b, err)
	}
	io.WriteString(p, "answer")
	p.Close()
	if b, err := io.ReadAll(c); string(b) != "answer" || err != nil {
		t.Errorf("entry side: read %q, %v; want the answer, then EOF", b, err)
	}
	c.Close()
	if line := r.exitLogs.wait(t, "stream closed"); line["aborted"] != nil || line["bytes_to_backend"] != 7.0 || line["bytes_to_app"] != 6.0 {
		t.Errorf("exit's stream closed line: %v; want 7 and 6 bytes, not aborted", line)
	}

	// Data left unread at Close resets the stream.
	c, err = r.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	p = <-conns
	io.WriteString(c, "unread")
	if _, err := io.ReadFull(p, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("entry side after the exit side closed with data unread: %v; want ECONNRESET", err)
	}
	if _, err := p.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v; want net.ErrClosed", err)
	}
	c.Close()

	// Close unblocks a Read; a deadline is a timeout.
	c, err = r.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	p = <-conns
	p.SetReadDeadline(time.Now().Add(-time.Second))
	var ne net.Error
	if _, err := p.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Read past its deadline: %v; want a timeout", err)
	}
	p.SetReadDeadline(time.Time{})
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		blocked <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it block; the result is the same either way
	c.Close()
	if err := <-blocked; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read blocked at Close: %v; want net.ErrClosed", err)
	}
	if _, err := io.ReadAll(p); err != nil {
		t.Errorf("exit side after the entry's Close: %v; want EOF", err)
	}
	p.Close()

	// The session is lost: a Read fails, never reads EOF.
	c, err = r.dial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	p = <-conns
	defer p.Close()
	defer c.Close()
	r.exit.books.SessionsExcept(nil)[0].Close()
	if _, err := c.Read(make([]byte, 10)); err == io.EOF || !errors.Is(err, relay.ErrSessionLost) {
		t.Errorf("entry side, session lost: %v; want relay.ErrSessionLost", err)
	}
	if _, err := p.Read(make([]byte, 10)); err == io.EOF || !errors.Is(err, relay.ErrSessionLost) {
		t.Errorf("exit side, session lost: %v; want relay.ErrSessionLost", err)
	}
}

// TestDialWhileServing: DialContext uses the session that Serve keeps for
// its listener's applications, and Run cannot start beside Serve.
func TestDialWhileServing(t *testing.T) {
	a := start(t, echoBackend(t))
	roundTrip(t, a.entryAddr, []byte("through the listener"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.entry.DialContext(ctx, "tcp", config.DefaultService)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "dialed")
	c.(*Conn).CloseWrite()
	if b, err := io.ReadAll(c); string(b) != "dialed" || err != nil {
		t.Errorf("dialed while Serve runs: read %q, %v", b, err)
	}
	c.Close()
	if got := a.exit.Stats().Sessions; got != 1 {
		t.Errorf("exit has %d sessions; want the 1 both share", got)
	}
	if err := a.entry.Run(ctx); err == nil || !strings.Contains(err.Error(), "running already") {
		t.Errorf("Run beside Serve: %v; want an error", err)
	}
}
