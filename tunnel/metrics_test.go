package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake"
)

// scraper reads an agent's /metrics over HTTP.
type scraper struct {
	t   *testing.T
	url string
}

// serveMetrics serves g on a status endpoint until the test ends, and
// returns its scraper.
func serveMetrics(t *testing.T, g prometheus.Gatherer) scraper {
	ln := listen(t)
	stop := StartStatus(ln, zerolog.Nop(), StatusConfig{
		Stats:   func() Stats { return Stats{} },
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
// backend dials when the stream ends, and how the session ended.
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
}

// TestMetricsKeyUpdates: with a key that lives for 8 records, both agents
// count the KEY_UPDATEs they send and receive while a stream carries data,
// and each side receives what the other sent.
func TestMetricsKeyUpdates(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	fc := &frame.Config{KeyUpdateRecords: 8}
	a := startTuned(t, echoBackend(t), nil, func(x *Exit, n *Entry) {
		n.keys.Load().hs.Frame = fc
		ks := testKeys()
		auth, err := handshake.NewKeySet(&ks[0].PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := handshake.NewResponder(handshake.Config{PrivateKey: ks[1], Authorized: auth, Frame: fc}, 0)
		if err != nil {
			t.Fatal(err)
		}
		x.resp.Store(resp)
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
	gone := listen(t)
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
		s := config.DefaultEntry()
		s.Peers, s.Key, s.PeerKey = []string{a.exitAddr}, "unused", "unused"
		e, err := NewEntry(EntryConfig{Settings: s, Key: key, PeerKey: peer}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { e.Serve(ctx, listen(t)); close(done) }()
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
