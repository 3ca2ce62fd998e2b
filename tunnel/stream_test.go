package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

func TestStreamHeaderRoundTrip(t *testing.T) {
	for _, h := range []streamHeader{{}, {service: "db", origin: "10.0.0.1:5555"}, {origin: strings.Repeat("x", 255)}} {
		got, err := readStreamHeader(bytes.NewReader(h.marshal()))
		if err != nil || got != h {
			t.Fatalf("%+v came back as %+v, %v", h, got, err)
		}
	}
	bad := [][]byte{
		{2, 0, 0},           // version 2
		{1, 3, 'd', 'b'},    // service cut short
		{1, 2, 'd', ' ', 0}, // service not printable
		{1, 0, 5, '1', '2'}, // origin cut short
	}
	for _, b := range bad {
		if _, err := readStreamHeader(bytes.NewReader(b)); err == nil {
			t.Fatalf("header %q accepted", b)
		}
	}
	st, msg, err := readStatus(bytes.NewReader(marshalStatus(StatusUnreachable, "backend down")))
	if err != nil || st != StatusUnreachable || msg != "backend down" {
		t.Fatalf("status came back as %v %q %v", st, msg, err)
	}
}

// TestUnknownService acts as an entry that names a service: the exit, which
// has only its default backend, answers status 1 and closes the stream.
func TestUnknownService(t *testing.T) {
	a := start(t, echoBackend(t))
	ks := testKeys()
	c, err := net.Dial("tcp", a.exitAddr)
	if err != nil {
		t.Fatal(err)
	}
	res, err := handshake.Initiate(context.Background(), c, &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := session.Client(res.Conn, session.Settings{KeepAlive: time.Minute, Window: 1 << 20}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	st.Write(streamHeader{service: "payments"}.marshal())
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	status, msg, err := readStatus(st)
	if err != nil || status != StatusUnknownService || !strings.Contains(msg, `"payments"`) {
		t.Fatalf("status %v %q, err %v; want unknown service naming it", status, msg, err)
	}
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("after status 1 the stream reads %v, want EOF", err)
	}
}

// TestStreamText: text fields are cut to 255 bytes without splitting a
// character, and the status message a peer sends loses control and format
// characters (bidi overrides, zero-width) before anyone logs it.
func TestStreamText(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	_, msg, err := readStatus(bytes.NewReader(marshalStatus(StatusUnreachable, long)))
	if err != nil || len(msg) != 254 || !strings.HasPrefix(long, msg) {
		t.Errorf("a 400-byte status message came back as %d bytes %q, %v", len(msg), msg, err)
	}
	h, err := readStreamHeader(bytes.NewReader(streamHeader{origin: long}.marshal()))
	if err != nil || len(h.origin) != 254 || !strings.HasPrefix(long, h.origin) {
		t.Errorf("a 400-byte origin came back as %d bytes %q, %v", len(h.origin), h.origin, err)
	}

	raw := "dial tcp \u202e10.0.0.1\u200b: refused\r\n"
	_, msg, err = readStatus(bytes.NewReader(append([]byte{byte(StatusUnreachable), byte(len(raw))}, raw...)))
	if want := "dial tcp ?10.0.0.1?: refused??"; err != nil || msg != want {
		t.Errorf("status message %q came back as %q, %v; want %q", raw, msg, err, want)
	}
}
