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
	ln := listen(t)
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
	ln := listen(t)
	startServices(t, xs, []ServiceListener{{Listener: ln, Service: config.DefaultService}})
	roundTrip(t, ln.Addr().String(), []byte("to the default service"))

	_, n := startServices(t, xs, nil)
	bad := listen(t)
	err := n.ServeListeners(context.Background(), []ServiceListener{{Listener: bad, Service: "no spaces"}})
	if err == nil || !strings.Contains(err.Error(), "no spaces") {
		t.Errorf("a listener for service %q: %v, want an error naming it", "no spaces", err)
	}
}
