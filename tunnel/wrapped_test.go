package tunnel

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/config"
)

// plainListener hands out connections that are neither sockets nor
// half-closable, as a TLS or PROXY-protocol listener's may be.
type plainListener struct{ net.Listener }

type plainConn struct{ net.Conn }

func (l plainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return plainConn{c}, nil
}

// TestWrappedListener: an entry serves a listener whose connections are
// plain net.Conns (before, ServeListeners asserted the raw-socket type and
// panicked): bytes go both ways intact, and closing the application's side
// ends the stream.
func TestWrappedListener(t *testing.T) {
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: echoBackend(t)}}
	ln := loopback(t)
	startServices(t, xs, []ServiceListener{{Listener: plainListener{ln}}})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte("wrapped listener "), 64<<10) // over 1 MiB: many chunks
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes that differ from the %d sent", len(got), len(payload))
	}
}

// TestServiceListenerNames: a listener's service is taken as the other
// entry points take it: "default" is the default service, and a name that
// is not a service name is refused before anything starts.
func TestServiceListenerNames(t *testing.T) {
	xs := ExitSettings{Services: []ExitService{{Name: "", Backend: echoBackend(t)}}}
	ln := loopback(t)
	startServices(t, xs, []ServiceListener{{Listener: ln, Service: config.DefaultService}})
	roundTrip(t, ln.Addr().String(), []byte("to the default service"))

	_, n := startServices(t, xs, nil)
	bad := loopback(t)
	err := n.ServeListeners(context.Background(), []ServiceListener{{Listener: bad, Service: "no spaces"}})
	if err == nil || !strings.Contains(err.Error(), "no spaces") {
		t.Errorf("a listener for service %q: %v, want an error naming it", "no spaces", err)
	}
}

// TestAppOriginZone: a link-local application address loses its zone in
// the stream header, so that the exit, which refuses an origin with a
// zone, accepts it (issue 17: such connections were refused).
func TestAppOriginZone(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 4000, Zone: "eth0"}, "[fe80::1]:4000"},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 5000}, "192.0.2.1:5000"},
		{&net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, ""},
	} {
		got := appOrigin(addrConn{remote: c.addr})
		if got != c.want || !validOrigin(got) {
			t.Errorf("origin of %v: %q (valid %v), want %q", c.addr, got, validOrigin(got), c.want)
		}
	}
}

// addrConn is a connection with a peer address and nothing else.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }
func (c addrConn) LocalAddr() net.Addr  { return &net.TCPAddr{} }
