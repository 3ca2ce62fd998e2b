package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/config"
)

func TestSourceLimiter(t *testing.T) {
	l := newSourceLimiter(2) // burst 4
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}
	b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 1}
	now := time.Now()
	for i := range 4 {
		if !l.allow(a, now) {
			t.Fatalf("handshake %d within the burst refused", i)
		}
	}
	if l.allow(a, now) {
		t.Fatal("fifth handshake in the same instant allowed")
	}
	if !l.allow(b, now) {
		t.Fatal("another source is limited by the first one's bucket")
	}
	if !l.allow(a, now.Add(600*time.Millisecond)) {
		t.Fatal("no token after 0.6s at 2/s")
	}
	if l.allow(a, now.Add(600*time.Millisecond)) {
		t.Fatal("two tokens after 0.6s at 2/s")
	}
}

func pingFrame(syn bool) []byte {
	h := make([]byte, yamuxHeaderLen)
	h[1] = yamuxTypePing
	if syn {
		binary.BigEndian.PutUint16(h[2:], yamuxFlagSYN)
	}
	return h
}

func dataFrame(body int) []byte {
	h := make([]byte, yamuxHeaderLen+body)
	binary.BigEndian.PutUint32(h[8:], uint32(body))
	for i := yamuxHeaderLen; i < len(h); i++ {
		h[i] = yamuxTypePing // a body byte that looks like a ping must not count
	}
	return h
}

func TestFrameScannerPingFlood(t *testing.T) {
	var s frameScanner
	now := time.Now()
	// Data frames, split at odd places, and ping answers (ACK) never count.
	var stream []byte
	for range 500 {
		stream = append(stream, dataFrame(37)...)
		stream = append(stream, pingFrame(false)...)
	}
	for len(stream) > 0 {
		n := min(len(stream), 13)
		if err := s.scan(stream[:n], now); err != nil {
			t.Fatalf("data and ping answers flagged: %v", err)
		}
		stream = stream[n:]
	}
	// Keepalive-rate pings pass for a long time.
	for i := range 1000 {
		if err := s.scan(pingFrame(true), now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("one ping a second flagged at %d", i)
		}
	}
	// A burst far beyond the bucket does not.
	later := now.Add(2000 * time.Second)
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		err = s.scan(pingFrame(true), later)
	}
	if err != errPingFlood {
		t.Fatalf("1000 pings at once: err = %v, want errPingFlood", err)
	}
}

func TestStreamCap(t *testing.T) {
	a := startWith(t, echoBackend(t), func(x *config.Exit, _ *config.Entry) { x.MaxStreams = 2 })
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
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("third stream got %d bytes, err %v; want it closed", n, err)
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
	probe := listen(t)
	addr := probe.Addr().String()
	probe.Close()
	a := startWith(t, echoBackend(t), func(_ *config.Exit, n *config.Entry) { n.StatusAddr = addr })
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
