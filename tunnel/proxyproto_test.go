package tunnel

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tunnel-dev/tunnel/handshake"
)

// recordingBackend keeps everything each connection sent until EOF.
type recordingBackend struct {
	mu   sync.Mutex
	got  [][]byte
	addr string
	done chan struct{} // a value per connection recorded
}

func newRecordingBackend(t *testing.T) *recordingBackend {
	b := &recordingBackend{done: make(chan struct{}, 16)}
	b.addr = backend(t, func(c *net.TCPConn) {
		data, _ := io.ReadAll(c)
		c.Close()
		b.mu.Lock()
		b.got = append(b.got, data)
		b.mu.Unlock()
		b.done <- struct{}{}
	})
	return b
}

// next waits for the next recorded connection and returns its bytes.
func (b *recordingBackend) next(t *testing.T) []byte {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend recorded no connection within 10 s")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.got[len(b.got)-1]
}

// TestProxyProtocol: a service with the option gets a PROXY v2 header
// with the application's address as the entry saw it and the entry key's
// fingerprint, then the application's bytes; a service without it gets
// the application's bytes and nothing else.
func TestProxyProtocol(t *testing.T) {
	plain, proxied := newRecordingBackend(t), newRecordingBackend(t)
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: plain.addr}, {Name: "pp", Backend: proxied.addr, ProxyProtocol: true}}
	lns := []ServiceListener{{Listener: loopback(t)}, {Listener: loopback(t), Service: "pp"}}
	startServices(t, xs, lns)

	payload := []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nnot a header, the application's bytes")
	send := func(addr string) net.Addr {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c)
		return c.LocalAddr()
	}

	send(lns[0].Listener.Addr().String())
	if got := plain.next(t); !bytes.Equal(got, payload) {
		t.Errorf("service without PROXY protocol: backend got %q, want the application's bytes unchanged, %q", got, payload)
	}

	app := send(lns[1].Listener.Addr().String())
	got := proxied.next(t)
	r := bufio.NewReader(bytes.NewReader(got))
	h, err := proxyproto.Read(r)
	if err != nil {
		t.Fatalf("backend got no PROXY header: %v: %q", err, got)
	}
	if h.Version != 2 || !h.Command.IsProxy() || h.SourceAddr.String() != app.String() {
		t.Errorf("header: version %d, command %v, source %v; want 2, PROXY, the application's %v", h.Version, h.Command, h.SourceAddr, app)
	}
	if h.DestinationAddr.String() != proxied.addr {
		t.Errorf("header destination %v, want the backend %s", h.DestinationAddr, proxied.addr)
	}
	tlvs, err := h.TLVs()
	if err != nil || len(tlvs) != 1 || tlvs[0].Type != 0xE0 || string(tlvs[0].Value) != handshake.Fingerprint(&testKeys()[0].PublicKey) {
		t.Errorf("TLVs %+v, %v; want one of type 0xE0 with the entry key's fingerprint", tlvs, err)
	}
	if rest, _ := io.ReadAll(r); !bytes.Equal(rest, payload) {
		t.Errorf("after the header the backend got %q, want %q", rest, payload)
	}
}
