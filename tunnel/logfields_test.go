package tunnel

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// logBuffer collects JSON log lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// wait returns the first line whose message is msg, waiting up to 10 s for it.
func (b *logBuffer) wait(t *testing.T, msg string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b.mu.Lock()
		text := b.buf.String()
		b.mu.Unlock()
		for _, line := range strings.Split(text, "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg {
				return m
			}
		}
	}
	t.Fatalf("no log line %q within 10 s", msg)
	return nil
}

// TestLogFields: byte counts carry the same name for the same direction on
// both agents, and durations are strings with a unit.
func TestLogFields(t *testing.T) {
	const up, down = 10, 1000
	back := backend(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c) // the request, up to its half-close
		c.Write(bytes.Repeat([]byte("x"), down))
		c.Close()
	})
	ks := testKeys()
	var exitLog, entryLog logBuffer

	xs := ExitSettings{}
	xs.Services, xs.DrainTimeout = []ExitService{{Backend: back}}, time.Second
	x, err := newExitForTest(xs, ks[1], &ks[0].PublicKey, zerolog.New(&exitLog))
	if err != nil {
		t.Fatal(err)
	}
	exitLn := loopback(t)
	ns := EntrySettings{}
	ns.Peers, ns.DrainTimeout = []string{exitLn.Addr().String()}, time.Second
	n, err := NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, zerolog.New(&entryLog))
	if err != nil {
		t.Fatal(err)
	}
	entryLn := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); x.Serve(ctx, exitLn) }()
	go func() { defer wg.Done(); n.Serve(ctx, entryLn) }()
	defer func() { cancel(); wg.Wait() }()

	app, err := net.Dial("tcp", entryLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.Write(bytes.Repeat([]byte("r"), up))
	app.(*net.TCPConn).CloseWrite()
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(app); err != nil || len(got) != down {
		t.Fatalf("read %d bytes, %v; want %d", len(got), err, down)
	}

	isDuration := func(who string, line map[string]any, key string) {
		t.Helper()
		s, ok := line[key].(string)
		if _, err := time.ParseDuration(s); !ok || err != nil {
			t.Errorf("%s %q: %s = %#v, want a duration with its unit", who, line["message"], key, line[key])
		}
	}
	for _, c := range []struct {
		who, msg string
		log      *logBuffer
	}{{"entry", "connection closed", &entryLog}, {"exit", "stream closed", &exitLog}} {
		l := c.log.wait(t, c.msg)
		if l["bytes_to_backend"] != float64(up) || l["bytes_to_app"] != float64(down) {
			t.Errorf("%s %q: bytes_to_backend %v, bytes_to_app %v; want %d and %d", c.who, c.msg,
				l["bytes_to_backend"], l["bytes_to_app"], up, down)
		}
		isDuration(c.who, l, "duration")
		isDuration(c.who, c.log.wait(t, "session established"), "handshake")
	}
	cancel()
	wg.Wait()
	isDuration("exit", exitLog.wait(t, "shutting down: draining open streams"), "drain_timeout")
	isDuration("entry", entryLog.wait(t, "shutting down: draining open connections"), "drain_timeout")
}
