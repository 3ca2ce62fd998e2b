package tunnel

import (
	"bytes"
	"io"
	"net"
	"testing"
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
