package tunnel

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/session"
	"github.com/tunnel-dev/tunnel/tunnel/sourcelimit"
)

// lines returns the log lines decoded.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(b.buf.Bytes()), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// serveExit runs an exit forwarding to backend, adjusted by adjust, that
// logs into the returned buffer at info level; it stops in t.Cleanup.
func serveExit(t *testing.T, backend string, adjust func(*ExitSettings)) (*Exit, string, *logBuffer) {
	t.Helper()
	ks := testKeys()
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: backend}}
	xs.DrainTimeout, xs.DialTimeout = time.Second, time.Second
	if adjust != nil {
		adjust(&xs)
	}
	logs := &logBuffer{}
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.New(logs).Level(zerolog.DebugLevel))
	if err != nil {
		t.Fatal(err)
	}
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return x, ln.Addr().String(), logs
}

// dialSession authenticates to the exit at addr as the test entry, from
// local IP from (empty: any), and returns a yamux client session over it.
func dialSession(t *testing.T, addr, from string) *session.Session {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ks := testKeys()
	res, err := handshake.Initiate(context.Background(), c, &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey})
	if err != nil {
		t.Fatalf("handshake from %s: %v", c.LocalAddr(), err)
	}
	sess, err := session.Client(res.Conn, session.Settings{KeepAlive: time.Minute, Window: 256 << 10}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// openRaw opens a stream and writes b as its first bytes.
func openRaw(t *testing.T, sess *session.Session, b []byte) *session.Stream {
	t.Helper()
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(b); err != nil {
		t.Fatal(err)
	}
	return st
}

// answer reads the exit's status on st.
func answer(t *testing.T, st *session.Stream) (Status, string) {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer st.SetReadDeadline(time.Time{})
	s, msg, err := readStatus(st)
	if err != nil {
		t.Fatalf("stream %d: no status: %v", st.ID(), err)
	}
	return s, msg
}

// TestSilentSourceLeavesSlots: 64 silent connections from 127.0.0.1, as
// many as --max-handshakes, keep no entry from 127.0.0.2 out.
func TestSilentSourceLeavesSlots(t *testing.T) {
	x, addr, _ := serveExit(t, echoBackend(t), func(x *ExitSettings) {
		x.HandshakeRate = 1000 // the rate is not what is tested
	})
	for range x.cfg.MaxHandshakes {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Let the exit take them up: all refused but those a source may have
	// in progress, or (without that cap) give it a second.
	want := int64(x.cfg.MaxHandshakes - sourcelimit.MaxPerSource)
	for end := time.Now().Add(time.Second); time.Now().Before(end) && x.Stats().HandshakesRefused < want; {
		time.Sleep(10 * time.Millisecond)
	}
	sess := dialSession(t, addr, "127.0.0.2")
	st := openRaw(t, sess, streamHeader{origin: "127.0.0.2:1"}.marshal())
	if s, msg := answer(t, st); s != StatusOK {
		t.Fatalf("stream from 127.0.0.2: status %v %q", s, msg)
	}
	st.Close()
	if got := x.Stats().HandshakesRefused; got != want {
		t.Errorf("exit refused %d handshakes of the silent source, want %d (%d may be in progress)", got, want, sourcelimit.MaxPerSource)
	}
}

// TestMalformedStreamHeader: a header the exit cannot take gets status 3
// and a message that says what is wrong.
func TestMalformedStreamHeader(t *testing.T) {
	_, addr, _ := serveExit(t, echoBackend(t), nil)
	sess := dialSession(t, addr, "")
	for _, tc := range []struct {
		name   string
		header []byte
		close  bool // half-close after the header
		want   string
	}{
		{"version 2", []byte{2, 0, 0}, false, "version 2"},
		{"service not printable", []byte{1, 2, 'd', ' ', 0}, false, "not printable"},
		{"cut short", []byte{1, 3, 'd', 'b'}, true, "closed before its header was complete"},
		{"origin not ip:port", streamHeader{origin: "localhost:80"}.marshal(), false, "origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openRaw(t, sess, tc.header)
			if tc.close {
				st.Close()
			}
			s, msg := answer(t, st)
			if s != StatusRefused || !strings.Contains(msg, tc.want) {
				t.Fatalf("status %v %q, want %v with a message containing %q", s, msg, StatusRefused, tc.want)
			}
			st.Close()
		})
	}
}

func TestValidOrigin(t *testing.T) {
	for origin, want := range map[string]bool{
		"":                       true,
		"10.0.0.1:5555":          true,
		"[2001:db8::1]:443":      true,
		"[::ffff:10.0.0.1]:1":    true,
		"10.0.0.1:0":             true,
		"10.0.0.1":               false,
		"10.0.0.1:":              false,
		"10.0.0.1:65536":         false,
		"10.0.0.1:-1":            false,
		"10.0.0.1:http":          false,
		"2001:db8::1:443":        false,
		"[fe80::1%eth0]:80":      false,
		"localhost:80":           false,
		"10.0.0.1:80 x":          false,
		"10.0.0.1:80\n":          false,
		"\u202e10.0.0.1:80":      false,
		"10.0.0.1:80;rm -rf /":   false,
		"10.0.0.256:80":          false,
		"user@10.0.0.1:80":       false,
		"10.0.0.1:80/path":       false,
		strings.Repeat("9", 255): false,
	} {
		if got := validOrigin(origin); got != want {
			t.Errorf("validOrigin(%q) = %v, want %v", origin, got, want)
		}
	}
}

// TestClaimedOrigin: the exit logs the origin an entry reports as
// claimed_origin, never as origin, and refuses one that is not ip:port
// without logging it as a field.
func TestClaimedOrigin(t *testing.T) {
	_, addr, logs := serveExit(t, echoBackend(t), nil)
	sess := dialSession(t, addr, "")
	st := openRaw(t, sess, streamHeader{origin: "10.9.8.7:6543"}.marshal())
	if s, msg := answer(t, st); s != StatusOK {
		t.Fatalf("origin 10.9.8.7:6543: status %v %q", s, msg)
	}
	st.Close()
	io.Copy(io.Discard, st)
	bad := openRaw(t, sess, streamHeader{origin: "evil\x1b[2J:80"}.marshal())
	if s, _ := answer(t, bad); s != StatusRefused {
		t.Fatalf("origin with an escape sequence: status %v, want %v", s, StatusRefused)
	}
	bad.Close()
	var claimed, refused bool
	for end := time.Now().Add(10 * time.Second); !(claimed && refused) && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
		claimed, refused = false, false
		for _, l := range logs.lines(t) {
			if _, ok := l["origin"]; ok {
				t.Fatalf("exit logged an origin field: %v", l)
			}
			if l["claimed_origin"] == "10.9.8.7:6543" && l["message"] == "stream closed" {
				claimed = true
			}
			if c, ok := l["claimed_origin"]; ok && c != "10.9.8.7:6543" {
				t.Fatalf("exit logged a bad origin as a field: %v", l)
			}
			if m, _ := l["message"].(string); strings.Contains(m, `"evil\x1b[2J:80"`) {
				refused = true
			}
		}
	}
	if !claimed || !refused {
		t.Fatalf("exit log lacks the stream's claimed_origin (%v) or the refused origin, quoted (%v):\n%s", claimed, refused, logs.buf.String())
	}
}

// TestRefusedStreamsDrained: the exit reads and discards what is sent into
// a stream it refused (status 1 here), beyond yamux's window.
func TestRefusedStreamsDrained(t *testing.T) {
	_, addr, _ := serveExit(t, echoBackend(t), nil)
	sess := dialSession(t, addr, "")
	st := openRaw(t, sess, streamHeader{service: "x"}.marshal())
	if s, _ := answer(t, st); s != StatusUnknownService {
		t.Fatalf("service x: status %v, want %v", s, StatusUnknownService)
	}
	st.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if n, err := st.Write(make([]byte, 4<<20)); err != nil {
		t.Fatalf("wrote %d of 4 MiB into a refused stream: %v (the exit does not drain it)", n, err)
	}
}

// TestRefusedStreamsCounted: MaxStreams 4, then streams for an unknown
// service, left open: the exit closes the session once more than
// maxRefused refused streams are open.
func TestRefusedStreamsCounted(t *testing.T) {
	x, addr, logs := serveExit(t, echoBackend(t), func(x *ExitSettings) { x.MaxStreams = 4 })
	sess := dialSession(t, addr, "")
	hdr := streamHeader{service: "x"}.marshal()
	opened := 0
	for ; opened < 2000; opened++ {
		st, err := sess.Open()
		if err != nil {
			break // the exit closed the session
		}
		st.Write(hdr) // and neither read nor close it
	}
	select {
	case <-sess.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("session still open 30s after %d refused streams left open (limit %d)", opened, maxRefused)
	}
	if opened <= maxRefused {
		t.Fatalf("session closed after %d streams, before the limit of %d refused streams", opened, maxRefused)
	}
	t.Logf("session closed by the exit after %d streams opened", opened)
	for end := time.Now().Add(10 * time.Second); x.Stats().Sessions != 0; {
		if time.Now().After(end) {
			pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			t.Fatal("exit still counts the session")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var closing bool
	for _, l := range logs.lines(t) {
		if l["message"] == "closing the session: the peer keeps too many refused streams open" {
			closing = true
		}
	}
	if !closing {
		t.Fatalf("exit did not log why it closed the session:\n%s", logs.buf.String())
	}
}
