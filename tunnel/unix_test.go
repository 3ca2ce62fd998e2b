package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
	"github.com/tunnel-dev/tunnel/tunnel/proxyheader"
)

// unixBackend serves every connection on a UNIX socket in dir with handle,
// which must close it, and returns the socket's unix:PATH address; it stops
// in t.Cleanup.
func unixBackend(t *testing.T, dir string, handle func(*net.UnixConn)) string {
	t.Helper()
	path := filepath.Join(dir, "backend.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(c.(*net.UnixConn)) })
		}
	})
	return config.UnixPrefix + path
}

// TestUnixSockets: applications on the entry's UNIX socket and on its TCP
// port reach a backend on a UNIX socket; both directions and the
// half-close go through. The backend, with PROXY protocol on, learns the
// TCP application's address, and, for the application on the UNIX socket,
// which has none, gets a LOCAL header; the entry key's fingerprint comes
// with both. A backend's reset closes the application's UNIX connection.
func TestUnixSockets(t *testing.T) {
	dir := t.TempDir()
	// The backend reads a PROXY header, then everything to EOF, and answers
	// with the header's source and what it read.
	type got struct {
		header *proxyproto.Header
		data   []byte
	}
	headers := make(chan got, 4)
	addr := unixBackend(t, dir, func(c *net.UnixConn) {
		defer c.Close()
		r := bufio.NewReader(c)
		h, err := proxyproto.Read(r)
		if err != nil {
			t.Errorf("backend: no PROXY header: %v", err)
			return
		}
		data, _ := io.ReadAll(r)
		headers <- got{h, data}
		c.Write(data)
	})
	xs := ExitSettings{}
	// A backend that resets every connection once it has read something.
	resets := backend(t, func(c *net.TCPConn) {
		c.Read(make([]byte, 1))
		c.SetLinger(0)
		c.Close()
	})
	xs.Services = []ExitService{{Name: "db", Backend: addr, ProxyProtocol: true}, {Name: "resets", Backend: resets}}
	appSock := filepath.Join(dir, "app.sock")
	unixLn, err := listen.Unix(context.Background(), appSock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	tcpLn := loopback(t)
	resetSock := filepath.Join(dir, "resets.sock")
	resetLn, err := listen.Unix(context.Background(), resetSock, 0)
	if err != nil {
		t.Fatal(err)
	}
	lns := []ServiceListener{{Listener: unixLn, Service: "db"}, {Listener: tcpLn, Service: "db"}, {Listener: resetLn, Service: "resets"}}
	x, _ := startServices(t, xs, lns)

	payload := bytes.Repeat([]byte("through the unix socket "), 20000) // about 470 KiB
	exchange := func(network, addr string) (local net.Addr, h *proxyproto.Header) {
		t.Helper()
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			c.Write(payload)
			c.(interface{ CloseWrite() error }).CloseWrite()
		}()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		back, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(back, payload) {
			t.Fatalf("over %s: %d bytes back (%v), want the %d sent", network, len(back), err, len(payload))
		}
		select {
		case g := <-headers:
			if !bytes.Equal(g.data, payload) {
				t.Errorf("over %s: the backend got %d bytes after the header, want %d", network, len(g.data), len(payload))
			}
			return c.LocalAddr(), g.header
		case <-time.After(10 * time.Second):
			t.Fatal("the backend recorded no connection")
		}
		return nil, nil
	}
	checkKey := func(h *proxyproto.Header) {
		t.Helper()
		tlvs, err := h.TLVs()
		if err != nil || len(tlvs) != 1 || tlvs[0].Type != proxyheader.TLVFingerprint || string(tlvs[0].Value) != x.keys.Load().authorized.Fingerprints()[0] {
			t.Errorf("TLVs %+v, %v; want the entry key's fingerprint", tlvs, err)
		}
	}

	_, h := exchange("unix", appSock)
	if !h.Command.IsLocal() || h.TransportProtocol != proxyproto.UNSPEC || h.SourceAddr != nil {
		t.Errorf("application on a UNIX socket: header command %v, family %v, source %v; want LOCAL, UNSPEC, none", h.Command, h.TransportProtocol, h.SourceAddr)
	}
	checkKey(h)

	app, h := exchange("tcp", tcpLn.Addr().String())
	if !h.Command.IsProxy() || h.SourceAddr.String() != app.String() {
		t.Errorf("application over TCP: header command %v, source %v; want PROXY, the application's %v", h.Command, h.SourceAddr, app)
	}
	if d, ok := h.DestinationAddr.(*net.TCPAddr); !ok || !d.IP.IsUnspecified() || d.Port != 0 {
		t.Errorf("application over TCP to a UNIX backend: destination %v, want the unspecified address, port 0", h.DestinationAddr)
	}
	checkKey(h)

	// A backend's reset reaches an application on a UNIX socket as a close
	// (a UNIX socket has no reset), without waiting.
	c, err := net.Dial("unix", resetSock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("after the backend's reset the application read %d bytes, %v; want its connection closed", n, err)
	}
}
