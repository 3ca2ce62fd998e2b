package tunnel

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/status"
)

func TestStreamCap(t *testing.T) {
	a := startWith(t, echoBackend(t), func(x *ExitSettings, _ *EntrySettings) { x.MaxStreams = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", a.entryAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("stream within the cap: %v", err)
		}
		held = append(held, c)
	}
	// The entry resets the third connection once the exit refuses its
	// stream, which may be before the dial returns.
	c, err := net.Dial("tcp", a.entryAddr)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("third stream got %d bytes, err %v; want it closed", n, err)
		}
	}
	if got := a.exit.Stats().Streams; got != 2 {
		t.Fatalf("exit reports %d streams open, want 2", got)
	}
	for _, h := range held {
		h.Close()
	}
}

func TestWriteStallAborts(t *testing.T) {
	// A backend that floods; the application never reads.
	flood := backend(t, func(c *net.TCPConn) {
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	a := startStall(t, flood, nil, 300*time.Millisecond)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	deadline := time.Now().Add(10 * time.Second)
	for a.entry.Stats().StreamsTotal == 0 || a.entry.Stats().Streams != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stalled stream still open after 10s: %+v", a.entry.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStatusEndpoint(t *testing.T) {
	a := startWith(t, echoBackend(t), nil)
	ln := loopback(t)
	addr := ln.Addr().String()
	stop := status.Serve(ln, zerolog.Nop(), status.Config{Stats: func() any { return a.entry.Stats() }, Ready: a.entry.Ready})
	defer stop()
	roundTrip(t, a.entryAddr, []byte("hello"))
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz = %d with a session up", resp.StatusCode)
	}
	resp, err = http.Get("http://" + addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Role != "entry" || st.Sessions != 1 || st.StreamsTotal != 1 || st.Goroutines == 0 || st.OpenFDs <= 0 {
		t.Fatalf("/status = %+v", st)
	}
	http.DefaultClient.CloseIdleConnections()
}
