package session

import (
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/frame"
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

// testSettings keep keepalives out of the way of the tests.
var testSettings = Settings{KeepAlive: time.Minute, Window: 256 << 10}

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

// sessionPair returns a client and a server Session over record
// connections on loopback TCP, and the server's TCP connection (closing it
// cuts the session). Both sessions are closed by t.Cleanup.
func sessionPair(t testing.TB) (client, server *Session, serverConn *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	var k frame.Keys
	client, err := Client(frame.New(a, k, nil), testSettings, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = Server(frame.New(b, frame.Keys{Send: k.Recv, Recv: k.Send, Transcript: k.Transcript}, nil), testSettings, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server, b
}
