package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/sourcelimit"
	"github.com/tunnel-dev/tunnel/tunnel/status"
)

// scraper reads an agent's /metrics over HTTP.
type scraper struct {
	t   *testing.T
	url string
}

// serveMetrics serves g on a status endpoint until the test ends, and
// returns its scraper.
func serveMetrics(t *testing.T, g prometheus.Gatherer) scraper {
	ln := loopback(t)
	stop := status.Serve(ln, zerolog.Nop(), status.Config{
		Stats:   func() any { return Stats{} },
		Ready:   func(context.Context) error { return nil },
		Metrics: g,
	})
	t.Cleanup(stop)
	return scraper{t: t, url: "http://" + ln.Addr().String() + "/metrics"}
}

// scrape returns every series of the endpoint's text format, keyed as printed
// (name{label="value",...}), with its value.
func (s scraper) scrape() map[string]float64 {
	s.t.Helper()
	resp, err := http.Get(s.url)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		s.t.Fatalf("GET %s: %s, %s", s.url, resp.Status, resp.Header.Get("Content-Type"))
	}
	series := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			s.t.Fatalf("metrics line %q: %v", line, err)
		}
		series[line[:i]] = v
	}
	return series
}

// want checks series against values, naming the agent.
func want(t *testing.T, agent string, series map[string]float64, values map[string]float64) {
	t.Helper()
	for k, v := range values {
		got, ok := series[k]
		if !ok {
			t.Errorf("%s: no series %s", agent, k)
		} else if got != v {
			t.Errorf("%s: %s = %v, want %v", agent, k, got, v)
		}
	}
}

// waitFor polls until cond holds on a fresh scrape, for up to 10 s.
func (s scraper) waitFor(what string, cond func(map[string]float64) bool) map[string]float64 {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := s.scrape()
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within 10s; metrics:\n%v", what, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sum adds the series of metric name that have the label pair label.
func sum(m map[string]float64, name, label string) float64 {
	var n float64
	for k, v := range m {
		if strings.HasPrefix(k, name+"{") && strings.Contains(k, label) {
			n += v
		}
	}
	return n
}

// TestMetrics scrapes both agents' /metrics while a stream carries data, and
// checks that the values move as they should: sessions and handshakes, the
// open stream, records and bytes during the transfer, then statuses and
// backend dials when the stream ends, how the session ended, and the
// entry's reconnect once an exit is back.
func TestMetrics(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	a := start(t, echoBackend(t))
	x, n := serveMetrics(t, a.exit.Metrics()), serveMetrics(t, a.entry.Metrics())
	entryFP := handshake.Fingerprint(&testKeys()[0].PublicKey)
	exitFP := handshake.Fingerprint(&testKeys()[1].PublicKey)

	// The handshake's result, its duration and the session gauge are three
	// updates: a scrape may fall between them.
	sessionUp := func(m map[string]float64) bool {
		return m[`tunnel_handshakes_total{result="ok"}`] == 1 && m[`tunnel_handshake_duration_seconds_count`] == 1 &&
			sum(m, "tunnel_sessions", "") == 1
	}
	xm, nm := x.waitFor("exit session", sessionUp), n.waitFor("entry session", sessionUp)
	want(t, "exit", xm, map[string]float64{
		`tunnel_build_info{role="exit",version=""}`:           1,
		`tunnel_sessions{peer_fingerprint="` + entryFP + `"}`: 1,
		`tunnel_handshake_duration_seconds_count`:             1,
		`tunnel_streams{service="default"}`:                   0,
		`tunnel_streams_total{service="default",status="ok"}`: 0,
		`tunnel_backend_dial_duration_seconds_count`:          0,
		`tunnel_handshakes_total{result="unknown_key"}`:       0,
	})
	want(t, "entry", nm, map[string]float64{
		`tunnel_build_info{role="entry",version=""}`:         1,
		`tunnel_sessions{peer_fingerprint="` + exitFP + `"}`: 1,
		`tunnel_handshake_duration_seconds_count`:            1,
		`tunnel_entry_reconnects_total`:                      0,
		`tunnel_streams{service="default"}`:                  0,
	})

	// One stream echoes 4 MiB in four steps; between them it is open and
	// records move on both sides.
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const step = 1 << 20
	chunk := bytes.Repeat([]byte("metrics!"), step/8)
	lastRecords := map[string]float64{}
	for i := range 4 {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, step)); err != nil {
			t.Fatal(err)
		}
		// The bytes count as they move: the stream is still open. The
		// last chunk's may be counted a moment after it was delivered.
		moved := float64((i + 1) * step)
		for name, s := range map[string]scraper{"exit": x, "entry": n} {
			m := s.waitFor(name+": bytes of step "+strconv.Itoa(i+1), func(m map[string]float64) bool {
				return m[`tunnel_bytes_total{direction="to_backend",service="default"}`] == moved &&
					m[`tunnel_bytes_total{direction="to_app",service="default"}`] == moved
			})
			want(t, name, m, map[string]float64{`tunnel_streams{service="default"}`: 1, `tunnel_streams_total{service="default",status="ok"}`: 0})
			for _, dir := range []string{"sent", "received"} {
				k := `tunnel_records_total{direction="` + dir + `"}`
				if m[k] <= lastRecords[name+dir] {
					t.Errorf("%s after step %d: %s = %v, not more than before (%v)", name, i+1, k, m[k], lastRecords[name+dir])
				}
				lastRecords[name+dir] = m[k]
			}
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The exit counts the stream as ended a moment before it stops counting
	// it as open.
	streamDone := func(m map[string]float64) bool {
		return m[`tunnel_streams_total{service="default",status="ok"}`] == 1 && m[`tunnel_streams{service="default"}`] == 0
	}
	xm, nm = x.waitFor("exit: stream ended", streamDone), n.waitFor("entry: stream ended", streamDone)
	for name, m := range map[string]map[string]float64{"exit": xm, "entry": nm} {
		want(t, name, m, map[string]float64{
			`tunnel_streams{service="default"}`:                            0,
			`tunnel_bytes_total{direction="to_backend",service="default"}`: 4 * step,
			`tunnel_bytes_total{direction="to_app",service="default"}`:     4 * step,
			`tunnel_streams_total{service="default",status="aborted"}`:     0,
		})
	}
	want(t, "exit", xm, map[string]float64{
		`tunnel_backend_dial_duration_seconds_count`: 1,
		`tunnel_backend_dial_errors_total`:           0,
	})

	// The exit goes away: each side counts one session ended, and none up.
	a.stopExit()
	xm = x.waitFor("exit: session ended", func(m map[string]float64) bool {
		return sum(m, "tunnel_sessions_closed_total", `peer_fingerprint="`+entryFP+`"`) == 1
	})
	n.waitFor("entry: session ended", func(m map[string]float64) bool {
		return sum(m, "tunnel_sessions_closed_total", `peer_fingerprint="`+exitFP+`"`) == 1
	})
	want(t, "exit", xm, map[string]float64{`tunnel_sessions{peer_fingerprint="` + entryFP + `"}`: 0})
	for name, m := range map[string]map[string]float64{"exit": xm, "entry": n.scrape()} {
		if bad := sum(m, "tunnel_sessions_closed_total", `outcome="cut"`) + sum(m, "tunnel_sessions_closed_total", `outcome="error"`); bad != 0 {
			t.Errorf("%s: a clean shutdown counted as %v sessions cut or failed", name, bad)
		}
	}
	if xm[`tunnel_records_total{direction="sent"}`] < lastRecords["exitsent"] {
		t.Errorf("exit: records sent went down when the session ended: %v, was %v", xm[`tunnel_records_total{direction="sent"}`], lastRecords["exitsent"])
	}

	// An exit comes back on the same address: the entry makes a session
	// again after it had none, and counts it as a reconnect.
	a.restartExit(t, echoBackend(t))
	nm = n.waitFor("entry: reconnected", func(m map[string]float64) bool {
		return m[`tunnel_entry_reconnects_total`] >= 1 && m[`tunnel_sessions{peer_fingerprint="`+exitFP+`"}`] == 1
	})
	want(t, "entry", nm, map[string]float64{`tunnel_entry_reconnects_total`: 1, `tunnel_handshakes_total{result="ok"}`: 2})
}

// TestMetricsKeyUpdates: with a key that lives for 8 records, both agents
// count the KEY_UPDATEs they send and receive while a stream carries data,
// and each side receives what the other sent.
func TestMetricsKeyUpdates(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	fc := &frame.Config{KeyUpdateRecords: 8}
	a := startTuned(t, echoBackend(t), nil, func(x *Exit, n *Entry) {
		n.keeper.Pins().Handshake.Frame = fc
		ks := testKeys()
		auth, err := handshake.NewKeySet(&ks[0].PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := handshake.NewResponder(handshake.Config{PrivateKey: ks[1], Authorized: auth, Frame: fc}, 0)
		if err != nil {
			t.Fatal(err)
		}
		k := *x.keys.Load()
		k.resp = resp
		x.keys.Store(&k)
	})
	x, n := serveMetrics(t, a.exit.Metrics()), serveMetrics(t, a.entry.Metrics())

	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const step = 1 << 20 // 16 records of 64 KiB or more each way: two key updates at least
	chunk := bytes.Repeat([]byte("rekey..."), step/8)
	last := map[string]float64{}
	for i := range 3 {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, step)); err != nil {
			t.Fatal(err)
		}
		for name, s := range map[string]scraper{"exit": x, "entry": n} {
			m := s.scrape()
			for _, dir := range []string{"sent", "received"} {
				k := `tunnel_key_updates_total{direction="` + dir + `"}`
				if m[k] <= last[name+dir] {
					t.Errorf("%s after step %d: %s = %v, not more than before (%v)", name, i+1, k, m[k], last[name+dir])
				}
				last[name+dir] = m[k]
			}
		}
	}
	// Once the stream is done and the session quiet, what one side sent the
	// other has received.
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	c.Close()
	a.stopExit()
	n.waitFor("entry: session ended", func(m map[string]float64) bool {
		return sum(m, "tunnel_sessions_closed_total", "") == 1
	})
	xm, nm := x.scrape(), n.scrape()
	for _, d := range [][2]string{{"sent", "received"}, {"received", "sent"}} {
		xk := `tunnel_key_updates_total{direction="` + d[0] + `"}`
		nk := `tunnel_key_updates_total{direction="` + d[1] + `"}`
		if xm[xk] != nm[nk] {
			t.Errorf("exit %s = %v, but entry %s = %v", xk, xm[xk], nk, nm[nk])
		}
	}
}

// TestMetricsRefusals: a backend that refuses, an entry key the exit does not
// know and an exit key the entry does not pin are counted by their names.
func TestMetricsRefusals(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	gone := loopback(t)
	goneAddr := gone.Addr().String()
	gone.Close()
	a := start(t, goneAddr)
	x, n := serveMetrics(t, a.exit.Metrics()), serveMetrics(t, a.entry.Metrics())

	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, c) // the entry closes it once the exit refuses
	c.Close()
	unreachable := func(m map[string]float64) bool {
		return m[`tunnel_streams_total{service="default",status="unreachable"}`] == 1
	}
	xm := x.waitFor("exit: stream refused", unreachable)
	n.waitFor("entry: stream refused", unreachable)
	want(t, "exit", xm, map[string]float64{
		`tunnel_backend_dial_errors_total`:                    1,
		`tunnel_backend_dial_duration_seconds_count`:          1,
		`tunnel_streams_total{service="default",status="ok"}`: 0,
	})

	stranger, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	ks := testKeys()
	other := func(key *rsa.PrivateKey, peer *rsa.PublicKey) scraper {
		s := EntrySettings{}
		s.Peers = []string{a.exitAddr}
		e, err := NewEntry(EntryConfig{Settings: s, Key: key, PeerKey: peer}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { e.Serve(ctx, loopback(t)); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return serveMetrics(t, e.Metrics())
	}
	unknown := other(stranger, &ks[1].PublicKey)  // the exit does not know this entry
	mismatch := other(ks[0], &stranger.PublicKey) // this entry pins another exit
	at := func(result string) func(map[string]float64) bool {
		return func(m map[string]float64) bool { return m[`tunnel_handshakes_total{result="`+result+`"}`] >= 1 }
	}
	unknown.waitFor("entry with an unknown key", at("unknown_key"))
	x.waitFor("exit, facing an unknown key", at("unknown_key"))
	m := mismatch.waitFor("entry pinning another key", at("pinned_key_mismatch"))
	want(t, "entry pinning another key", m, map[string]float64{`tunnel_handshakes_total{result="ok"}`: 0})
}

// tcpPair returns both ends of a loopback TCP connection; they close in
// t.Cleanup.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln := loopback(t)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// sigFlipConn flips a bit in the last byte of the first handshake message
// it reads: on the initiator that is HELLO_R, whose signature ends it
// (PROTOCOL.md section 2.1: type u8, length u24, body).
type sigFlipConn struct {
	net.Conn
	off int // bytes read so far
	hdr [4]byte
}

func (c *sigFlipConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for i := range p[:n] {
		if c.off < len(c.hdr) {
			c.hdr[c.off] = p[i]
		} else if body := int(c.hdr[1])<<16 | int(c.hdr[2])<<8 | int(c.hdr[3]); c.off == len(c.hdr)+body-1 {
			p[i] ^= 0x01
		}
		c.off++
	}
	return n, err
}

// stallConn holds the initiator's second Write (KEY_I, sent once HELLO_R
// has come, so the responder holds a slot by then) until release is
// closed, and then fails it.
type stallConn struct {
	net.Conn
	writes  int
	stalled chan struct{} // closed when the second Write begins
	release chan struct{}
}

func newStallConn(c net.Conn) *stallConn {
	return &stallConn{Conn: c, stalled: make(chan struct{}), release: make(chan struct{})}
}

func (c *stallConn) Write(b []byte) (int, error) {
	if c.writes++; c.writes == 2 {
		close(c.stalled)
		<-c.release
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

// holdHandshake starts a handshake from the test entry to the responder on
// the far end of c (a real exit's, or a Responder's) that stops before
// KEY_I, so that it holds one of the responder's slots; it returns once it
// does, and the function that ends it and waits for it (t.Cleanup calls it
// too).
func holdHandshake(t *testing.T, c net.Conn) (end func()) {
	t.Helper()
	ks := testKeys()
	sc := newStallConn(c)
	done := make(chan error, 1)
	go func() {
		_, err := handshake.Initiate(context.Background(), sc, &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey})
		done <- err
	}()
	select {
	case <-sc.stalled:
	case err := <-done:
		t.Fatalf("the holding handshake ended before KEY_I: %v", err)
	}
	var once sync.Once
	end = func() { once.Do(func() { close(sc.release); <-done }) }
	t.Cleanup(end)
	return end
}

// TestClassifyHandshake names the errors that the handshake package
// returns, on each side, for each result of tunnel_handshakes_total that a
// failed handshake can have.
func TestClassifyHandshake(t *testing.T) {
	ks := testKeys()
	entryKey, exitKey := ks[0], ks[1]
	stranger, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	responder := func(t *testing.T, timeout time.Duration, slots int) *handshake.Responder {
		auth, err := handshake.NewKeySet(&entryKey.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		r, err := handshake.NewResponder(handshake.Config{PrivateKey: exitKey, Authorized: auth, Timeout: timeout}, slots)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// both runs a handshake between an initiator with key and pin, its
	// connection wrapped by wrap, and r; it returns both sides' errors.
	both := func(t *testing.T, r *handshake.Responder, key *rsa.PrivateKey, pin *rsa.PublicKey, wrap func(net.Conn) net.Conn) (ini, res error) {
		a, b := tcpPair(t)
		errc := make(chan error, 1)
		go func() {
			_, err := r.Handshake(context.Background(), b)
			errc <- err
		}()
		if wrap != nil {
			a = wrap(a)
		}
		_, ini = handshake.Initiate(context.Background(), a, &handshake.Config{PrivateKey: key, PeerKey: pin, Timeout: 10 * time.Second})
		return ini, <-errc
	}
	// responderOnly runs r against a peer that sends send and then waits.
	responderOnly := func(t *testing.T, r *handshake.Responder, send []byte) error {
		a, b := tcpPair(t)
		a.Write(send)
		_, err := r.Handshake(context.Background(), b)
		return err
	}
	// initiatorOnly runs the test entry against a peer that answers reply
	// to its HELLO_I, or nothing if reply is nil, within ctx.
	initiatorOnly := func(t *testing.T, ctx context.Context, reply []byte) error {
		a, b := tcpPair(t)
		if reply != nil {
			go func() {
				b.Read(make([]byte, 8))
				b.Write(reply)
			}()
		}
		_, err := handshake.Initiate(ctx, a, &handshake.Config{PrivateKey: entryKey, PeerKey: &exitKey.PublicKey})
		return err
	}
	const none = "" // this side is not checked
	cases := []struct {
		name     string
		run      func(t *testing.T) (ini, res error)
		ini, res string // results as ledger.HandshakeResult names them
	}{
		{"entry key not authorized", func(t *testing.T) (error, error) {
			return both(t, responder(t, 10*time.Second, 0), stranger, &exitKey.PublicKey, nil)
		}, "unknown_key", "unknown_key"},
		{"exit key not pinned", func(t *testing.T) (error, error) {
			return both(t, responder(t, 10*time.Second, 0), entryKey, &stranger.PublicKey, nil)
		}, "pinned_key_mismatch", none},
		{"HELLO_R signature altered", func(t *testing.T) (error, error) {
			return both(t, responder(t, 10*time.Second, 0), entryKey, &exitKey.PublicKey, func(c net.Conn) net.Conn { return &sigFlipConn{Conn: c} })
		}, "bad_signature", "bad_signature"},
		{"responder's slots all taken", func(t *testing.T) (error, error) {
			r := responder(t, 10*time.Second, 1)
			a, b := tcpPair(t)
			held := make(chan struct{})
			go func() { r.Handshake(context.Background(), b); close(held) }()
			end := holdHandshake(t, a)
			defer func() { end(); <-held }()
			return both(t, r, entryKey, &exitKey.PublicKey, nil)
		}, "busy", "busy"},
		{"refused before the handshake", func(t *testing.T) (error, error) {
			a, b := tcpPair(t)
			go responder(t, 10*time.Second, 0).Refuse(b, "too many handshakes from your address; retry later")
			_, err := handshake.Initiate(context.Background(), a, &handshake.Config{PrivateKey: entryKey, PeerKey: &exitKey.PublicKey})
			return err, nil
		}, "busy", none},
		{"silent peer", func(t *testing.T) (error, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			return initiatorOnly(t, ctx, nil), responderOnly(t, responder(t, 200*time.Millisecond, 0), nil)
		}, "timeout", "timeout"},
		{"half a preface, then silence", func(t *testing.T) (error, error) {
			return nil, responderOnly(t, responder(t, 200*time.Millisecond, 0), []byte("TUNN"))
		}, none, "timeout"},
		{"garbage", func(t *testing.T) (error, error) {
			return initiatorOnly(t, context.Background(), []byte("HTTP/1.1 400 Bad Request\r\n\r\n")),
				responderOnly(t, responder(t, 10*time.Second, 0), []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		}, "protocol_error", "protocol_error"},
		{"protocol version 3", func(t *testing.T) (error, error) {
			return nil, responderOnly(t, responder(t, 10*time.Second, 0), []byte("TUNNEL\x00\x03"))
		}, none, "protocol_error"},
		{"KEY_I first", func(t *testing.T) (error, error) {
			return nil, responderOnly(t, responder(t, 10*time.Second, 0), []byte("TUNNEL\x00\x01\x03\x00\x00\x04\x00\x00\x00\x00"))
		}, none, "protocol_error"},
		{"peer closes", func(t *testing.T) (error, error) {
			a, b := tcpPair(t)
			a.Close()
			_, err := responder(t, 10*time.Second, 0).Handshake(context.Background(), b)
			return nil, err
		}, none, "other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ini, res := tc.run(t)
			for _, side := range []struct {
				name      string
				err       error
				want      string
				initiator bool
			}{{"initiator", ini, tc.ini, true}, {"responder", res, tc.res, false}} {
				if side.want == none {
					continue
				}
				if side.err == nil {
					t.Errorf("%s: the handshake succeeded", side.name)
				} else if got := ledger.HandshakeResult(side.err, side.initiator); got != side.want {
					t.Errorf("%s: %v\ncounted as %s, want %s", side.name, side.err, got, side.want)
				}
			}
		})
	}
}

// TestMetricsHandshakeFailures drives real exits into each result of a
// failed handshake that the exit itself meets, and scrapes them: garbage,
// a silent connection, a handshake while the only slot is held, a
// signature the entry rejects, and, on exits of their own, a source over
// --handshake-rate and one with too many handshakes in progress.
func TestMetricsHandshakeFailures(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	ks := testKeys()
	x, addr, _ := serveExit(t, echoBackend(t), func(s *ExitSettings) { s.MaxHandshakes = 1 })
	xm := serveMetrics(t, x.Metrics())
	dial := func(addr string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	result := func(r string) string { return `tunnel_handshakes_total{result="` + r + `"}` }
	reaches := func(r string, n float64) func(map[string]float64) bool {
		return func(m map[string]float64) bool { return m[result(r)] >= n }
	}

	// Not the protocol at all.
	dial(addr).Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	xm.waitFor("exit: garbage counted", reaches("protocol_error", 1))

	// Nothing within handshake.HelloTimeout.
	dial(addr)
	xm.waitFor("exit: silent connection counted", reaches("timeout", 1))

	// The one slot is held by a handshake that stopped before KEY_I.
	end := holdHandshake(t, dial(addr))
	_, err := handshake.Initiate(context.Background(), dial(addr), &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey})
	if !errors.Is(err, handshake.ErrBusy) {
		t.Errorf("handshake while the only slot is held: %v, want ALERT busy", err)
	}
	xm.waitFor("exit: busy counted", reaches("busy", 1))
	end()
	xm.waitFor("exit: the holding handshake ended (cut)", reaches("other", 1))

	// The entry finds HELLO_R's signature wrong and says so.
	_, err = handshake.Initiate(context.Background(), &sigFlipConn{Conn: dial(addr)}, &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey})
	if !errors.Is(err, handshake.ErrBadSignature) {
		t.Errorf("HELLO_R with its signature altered: %v, want bad signature", err)
	}
	m := xm.waitFor("exit: bad signature counted", reaches("bad_signature", 1))
	want(t, "exit", m, map[string]float64{
		result("ok"): 0, result("protocol_error"): 1, result("timeout"): 1, result("busy"): 1,
		result("bad_signature"): 1, result("other"): 1, result("rate_limited"): 0,
	})

	// --handshake-rate: a bucket of one token that refills in 1000 s.
	slow, slowAddr, _ := serveExit(t, echoBackend(t), func(s *ExitSettings) { s.HandshakeRate = 0.001 })
	sm := serveMetrics(t, slow.Metrics())
	dial(slowAddr).Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	sm.waitFor("rate-limited exit: the first connection handshakes", reaches("protocol_error", 1))
	_, err = handshake.Initiate(context.Background(), dial(slowAddr), &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey})
	if !errors.Is(err, handshake.ErrBusy) {
		t.Errorf("handshake over --handshake-rate: %v, want ALERT busy", err)
	}
	m = sm.waitFor("rate-limited exit: the second refused", reaches("rate_limited", 1))
	want(t, "rate-limited exit", m, map[string]float64{result("rate_limited"): 1, result("ok"): 0, result("busy"): 0})

	// The cap on handshakes in progress from one source counts as
	// rate_limited too: one silent connection more than it allows.
	capped, cappedAddr, _ := serveExit(t, echoBackend(t), nil)
	cm := serveMetrics(t, capped.Metrics())
	for range sourcelimit.MaxPerSource + 1 {
		dial(cappedAddr)
	}
	cm.waitFor("capped exit: one refused", reaches("rate_limited", 1))
	m = cm.waitFor("capped exit: the others timed out", reaches("timeout", sourcelimit.MaxPerSource))
	want(t, "capped exit", m, map[string]float64{result("rate_limited"): 1, result("timeout"): sourcelimit.MaxPerSource})
}
