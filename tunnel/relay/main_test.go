package relay

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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

// tcpPair returns the two ends of a loopback TCP connection, closed by
// t.Cleanup.
func tcpPair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// plainConn hides everything of a connection but net.Conn: no CloseWrite,
// no SyscallConn, so the relay takes its fallback path.
type plainConn struct{ net.Conn }

// gatedConn holds its Reads until open is closed.
type gatedConn struct {
	net.Conn
	open chan struct{}
}

func (g *gatedConn) Read(p []byte) (int, error) {
	<-g.open
	return g.Conn.Read(p)
}

// sessions are a client and a server session over record connections on
// loopback TCP.
type sessions struct {
	client, server *session.Session
	serverConn     *net.TCPConn // closing it cuts both sessions
	release        func()       // lets the client read the server's frames (gated only)
	running        []running    // relays Run in goroutines
}

// sessionPair returns two connected sessions, closed by t.Cleanup. With
// gated, the client reads nothing of what the server sends until release.
func sessionPair(t testing.TB, gated bool) *sessions {
	t.Helper()
	a, b := tcpPair(t)
	var ca net.Conn = a
	s := &sessions{serverConn: b, release: func() {}}
	if gated {
		g := &gatedConn{Conn: a, open: make(chan struct{})}
		var once sync.Once
		s.release = func() { once.Do(func() { close(g.open) }) }
		ca = g
	}
	set := session.Settings{KeepAlive: time.Minute, Window: 256 << 10}
	var k frame.Keys
	var err error
	s.client, err = session.Client(frame.New(ca, k, nil), set, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.client.Close() })
	s.server, err = session.Server(frame.New(b, frame.Keys{Send: k.Recv, Recv: k.Send, Transcript: k.Transcript}, nil), set, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.server.Close() })
	t.Cleanup(func() { // after the relays' connections are closed (tcpPair)
		for _, r := range s.running {
			waitResult(t, r.which, r.ch)
		}
	})
	t.Cleanup(s.release) // before the sessions close: yamux waits for its reader
	return s
}

// run runs r in a goroutine, reporting on the channel it returns. The
// pair's connections are closed by t.Cleanup, and then sessionPair's
// cleanup waits for the report.
func (s *sessions) run(which string, r *Relay) chan Result {
	ch := make(chan Result, 1)
	go func() { ch <- r.Run() }()
	s.running = append(s.running, running{which, ch})
	return ch
}

type running struct {
	which string
	ch    chan Result
}

// opened is a relay at the entry: the application's connection (app, the
// test's end) relayed into a stream the client opened.
type opened struct {
	app    *net.TCPConn
	st     *session.Stream
	r      *Relay
	result chan Result
}

// startEntry opens a stream on s.client and relays a new connection into
// it with o; wrap, if not nil, wraps the relay's end of the connection.
// run says whether Run is called at once (else the test calls Fail).
func startEntry(t *testing.T, s *sessions, o Options, wrap func(net.Conn) net.Conn, run bool) *opened {
	t.Helper()
	app, agent := tcpPair(t)
	st, err := s.client.Open()
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn = agent
	if wrap != nil {
		conn = wrap(agent)
	}
	e := &opened{app: app, st: st, r: Start(conn, st, o), result: make(chan Result, 1)}
	if run {
		e.result = s.run("entry", e.r)
	}
	return e
}

// accepted is a relay at the exit: a stream the server accepted relayed
// to a backend connection (backend, the test's end).
type accepted struct {
	backend *net.TCPConn
	st      *session.Stream
	result  chan Result
}

// startExit accepts a stream on s.server and relays it to a new
// connection.
func startExit(t *testing.T, s *sessions, o Options, wrap func(net.Conn) net.Conn) *accepted {
	t.Helper()
	st, err := s.server.Accept()
	if err != nil {
		t.Fatal(err)
	}
	backend, agent := tcpPair(t)
	var conn net.Conn = agent
	if wrap != nil {
		conn = wrap(agent)
	}
	return &accepted{backend: backend, st: st, result: s.run("exit", Start(conn, st, o))}
}

// waitResult waits up to 10 s for a relay's result, and puts it back for
// whoever else wants it.
func waitResult(t testing.TB, which string, ch chan Result) Result {
	t.Helper()
	select {
	case r := <-ch:
		ch <- r
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("the %s relay has not reported after 10 s", which)
		return Result{}
	}
}

func options(pool *Pool) Options { return Options{Pool: pool, Stall: DefaultWriteStall} }
