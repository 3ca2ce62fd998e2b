package handshake

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bufConn is a net.Conn over a bytes.Buffer.
type bufConn struct{ bytes.Buffer }

func (*bufConn) Close() error                     { return nil }
func (*bufConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (*bufConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (*bufConn) SetDeadline(time.Time) error      { return nil }
func (*bufConn) SetReadDeadline(time.Time) error  { return nil }
func (*bufConn) SetWriteDeadline(time.Time) error { return nil }

// testKeys are generated once per test binary: RSA generation is slow.
var testKeys = sync.OnceValue(func() [3]*rsa.PrivateKey {
	var ks [3]*rsa.PrivateKey
	for i := range ks {
		k, err := GenerateKey(MinKeyBits)
		if err != nil {
			panic(err)
		}
		ks[i] = k
	}
	return ks
})

// keys returns initiator, responder and a third, unrelated key.
func keys() (ini, res, other *rsa.PrivateKey) {
	k := testKeys()
	return k[0], k[1], k[2]
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	return tcpPairFrom(t, "127.0.0.1")
}

// tcpPairFrom is tcpPair with the dialing end bound to the loopback
// address from.
func tcpPairFrom(t *testing.T, from string) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	a, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type outcome struct {
	res *Result
	err error
}

// runBoth runs Initiate on a and the responder on b, concurrently.
func runBoth(t *testing.T, a, b net.Conn, icfg *Config, r *Responder) (ini, res outcome) {
	t.Helper()
	ctx := context.Background()
	done := make(chan outcome, 1)
	go func() {
		rr, err := r.Handshake(ctx, b)
		done <- outcome{rr, err}
	}()
	ir, err := Initiate(ctx, a, icfg)
	ini = outcome{ir, err}
	res = <-done
	t.Cleanup(func() {
		for _, o := range []outcome{ini, res} {
			if o.res != nil {
				o.res.Conn.Close()
			}
		}
	})
	return ini, res
}

func newResponder(t *testing.T, priv *rsa.PrivateKey, authorized ...*rsa.PublicKey) *Responder {
	t.Helper()
	r, err := NewResponder(Config{PrivateKey: priv, Authorized: mustKeySet(t, authorized...), Timeout: 5 * time.Second}, 4)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestHandshakeAndData(t *testing.T) {
	for name, transport := range map[string]func(*testing.T) (net.Conn, net.Conn){
		"tcp":  tcpPair,
		"pipe": func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() },
	} {
		t.Run(name, func(t *testing.T) {
			ik, rk, _ := keys()
			a, b := transport(t)
			ini, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey}, newResponder(t, rk, &ik.PublicKey))
			if ini.err != nil || res.err != nil {
				t.Fatalf("initiator: %v; responder: %v", ini.err, res.err)
			}
			if res.res.PeerFingerprint != Fingerprint(&ik.PublicKey) || ini.res.PeerFingerprint != Fingerprint(&rk.PublicKey) {
				t.Fatal("peer fingerprints do not match the keys used")
			}
			if ini.res.Suite != SuiteAES256CFBHMACSHA256 || ini.res.Duration <= 0 {
				t.Fatalf("result: %+v", ini.res)
			}
			// Data both ways; the initiator's first Read checks the responder's FINISHED.
			go func() {
				ini.res.Conn.Write([]byte("ping"))
				ini.res.Conn.CloseWrite()
			}()
			got, err := io.ReadAll(res.res.Conn)
			if err != nil || string(got) != "ping" {
				t.Fatalf("responder read %q, %v", got, err)
			}
			go func() {
				res.res.Conn.Write([]byte("pong"))
				res.res.Conn.CloseWrite()
			}()
			got, err = io.ReadAll(ini.res.Conn)
			if err != nil || string(got) != "pong" {
				t.Fatalf("initiator read %q, %v", got, err)
			}
		})
	}
}

func TestUnknownInitiatorKey(t *testing.T) {
	ik, rk, other := keys()
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey}, newResponder(t, rk, &other.PublicKey))
	var ae *AlertError
	if !errors.As(ini.err, &ae) || ae.Code != AlertUnknownKey || !errors.Is(ini.err, ErrUnknownKey) {
		t.Fatalf("initiator err = %v, want ALERT unknown_key", ini.err)
	}
	fp := Fingerprint(&ik.PublicKey)
	for _, want := range []string{"rejected", "not authorized", fp} {
		if !strings.Contains(ini.err.Error(), want) {
			t.Errorf("initiator error %q lacks %q", ini.err, want)
		}
	}
	if !errors.Is(res.err, ErrUnknownKey) || !strings.Contains(res.err.Error(), fp) {
		t.Fatalf("responder err = %v, want ErrUnknownKey naming %s", res.err, fp)
	}
}

func TestWrongPinnedKey(t *testing.T) {
	ik, rk, other := keys()
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &other.PublicKey}, newResponder(t, rk, &ik.PublicKey))
	if !errors.Is(ini.err, ErrUnknownKey) {
		t.Fatalf("initiator err = %v, want ErrUnknownKey", ini.err)
	}
	for _, want := range []string{"pinned", Fingerprint(&rk.PublicKey), Fingerprint(&other.PublicKey)} {
		if !strings.Contains(ini.err.Error(), want) {
			t.Errorf("initiator error %q lacks %q", ini.err, want)
		}
	}
	var ae *AlertError
	if !errors.As(res.err, &ae) || ae.Code != AlertUnknownKey {
		t.Fatalf("responder err = %v, want the initiator's ALERT unknown_key", res.err)
	}
}

// flipRelay copies a<->b, flipping one bit at byte offset `at` of the
// direction selected by toResponder.
func flipRelay(t *testing.T, toResponder bool, at int) (ini, res net.Conn) {
	i1, i2 := tcpPair(t)
	r1, r2 := tcpPair(t)
	pump := func(dst, src net.Conn, flip bool) {
		buf := make([]byte, 1)
		for off := 0; ; off++ {
			if _, err := src.Read(buf); err != nil {
				dst.(*net.TCPConn).CloseWrite()
				return
			}
			if flip && off == at {
				buf[0] ^= 0x01
			}
			if _, err := dst.Write(buf); err != nil {
				return // the sockets are closed by tcpPair's cleanup
			}
		}
	}
	go pump(r1, i2, toResponder)
	go pump(i2, r1, !toResponder)
	return i1, r2
}

func TestBadSignatures(t *testing.T) {
	ik, rk, _ := keys()
	sigLen := ik.Size()
	m1Len := prefaceLen + msgHeaderLen + 1 + 1 + helloIFixed
	cases := []struct {
		name        string
		toResponder bool
		at          int
		iniErr      error
		resErr      error
	}{
		{"sig_r", false, msgHeaderLen + helloRFixed + 2 + sigLen/2, ErrBadSignature, ErrBadSignature},
		{"sig_i", true, m1Len + msgHeaderLen + 2 + sigLen + 2 + sigLen/2, ErrBadSignature, ErrBadSignature},
		{"KEY_I ciphertext", true, m1Len + msgHeaderLen + 2 + 10, ErrBadSignature, ErrBadSignature}, // covered by sig_i
		{"HELLO_I random", true, prefaceLen + msgHeaderLen + 2 + 3, ErrBadSignature, ErrBadSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := flipRelay(t, tc.toResponder, tc.at)
			ini, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey}, newResponder(t, rk, &ik.PublicKey))
			if !errors.Is(ini.err, tc.iniErr) || !errors.Is(res.err, tc.resErr) {
				t.Fatalf("initiator: %v\nresponder: %v", ini.err, res.err)
			}
		})
	}
}

// rawResponder runs a responder on b and returns what it sent back to a
// client that wrote `send` and then waited.
func rawExchange(t *testing.T, r *Responder, send []byte) (reply []byte, err error) {
	a, b := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := r.Handshake(context.Background(), b)
		done <- err
	}()
	a.Write(send)
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, _ = io.ReadAll(a)
	return reply, <-done
}

func readAlert(t *testing.T, b []byte) *alert {
	t.Helper()
	if len(b) < msgHeaderLen || b[0] != msgAlert {
		t.Fatalf("reply %q is not an ALERT", b)
	}
	a, err := parseAlert(b[msgHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestResponderRejectsBadOpenings(t *testing.T) {
	ik, rk, other := keys()
	r := newResponder(t, rk, &ik.PublicKey)
	valid := func(mod func(*helloI)) []byte {
		st, _ := newInitiator(&Config{PrivateKey: ik, PeerKey: &rk.PublicKey})
		m1, _ := st.hello()
		hi, _ := parseHelloI(m1[prefaceLen+msgHeaderLen:])
		mod(hi)
		return appendMsg(preface[:], msgHelloI, hi.body())
	}
	cases := []struct {
		name  string
		send  []byte
		alert AlertCode // 0: closed without a word
		err   error
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0, ErrNotTunnel},
		{"version 3", append([]byte(prefaceMagic), 3, 0, 0, 0), AlertUnsupportedVersion, ErrUnsupportedVersion},
		{"no common suite", valid(func(h *helloI) { h.suites = []byte{0x02, 0x07} }), AlertNoCommonSuite, ErrNoCommonSuite},
		{"empty suite list", valid(func(h *helloI) { h.suites = nil }), AlertNoCommonSuite, ErrNoCommonSuite},
		{"unknown key", valid(func(h *helloI) { h.keyID = KeyID(&other.PublicKey) }), AlertUnknownKey, ErrUnknownKey},
		{"low-order X25519", valid(func(h *helloI) { h.x25519 = make([]byte, 32) }), AlertProtocolError, ErrProtocol},
		{"bad ML-KEM key", valid(func(h *helloI) { h.mlkemEK = bytes.Repeat([]byte{0xff}, mlkemEKLen) }), AlertProtocolError, ErrProtocol},
		{"trailing byte", func() []byte {
			m := valid(func(*helloI) {})
			body := append(bytes.Clone(m[prefaceLen+msgHeaderLen:]), 0)
			return appendMsg(preface[:], msgHelloI, body)
		}(), AlertProtocolError, ErrProtocol},
		{"KEY_I first", appendMsg(preface[:], msgKeyI, []byte{0, 0, 0, 0}), AlertProtocolError, ErrProtocol},
		{"oversized body", append(preface[:], msgHelloI, 0, 0x20, 1), AlertProtocolError, ErrProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reply, err := rawExchange(t, r, tc.send)
			if !errors.Is(err, tc.err) {
				t.Fatalf("responder err = %v, want %v", err, tc.err)
			}
			if tc.alert == 0 {
				if len(reply) != 0 {
					t.Fatalf("responder answered %q, want silence", reply)
				}
				return
			}
			if a := readAlert(t, reply); a.code != tc.alert || a.reason == "" {
				t.Fatalf("ALERT %v %q, want %v with a reason", a.code, a.reason, tc.alert)
			}
		})
	}
}

func TestInitiatorAgainstNonTunnel(t *testing.T) {
	ik, rk, _ := keys()
	a, b := tcpPair(t)
	go func() {
		io.ReadFull(b, make([]byte, 8))
		b.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	}()
	_, err := Initiate(context.Background(), a, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey})
	if !errors.Is(err, ErrNotTunnel) || !strings.Contains(err.Error(), "HTTP") {
		t.Fatalf("err = %v, want ErrNotTunnel showing what the peer sent", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	ik, rk, _ := keys()
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: 200 * time.Millisecond}, 4)
	a, b := tcpPair(t)
	a.Write(preface[:2]) // a slow initiator: two bytes, then nothing
	start := time.Now()
	_, err := r.Handshake(context.Background(), b)
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cut off after %v, want about 200ms", d)
	}
}

func TestInitiatorContextCancel(t *testing.T) {
	ik, rk, _ := keys()
	a, _ := tcpPair(t) // the peer never answers
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Initiate(ctx, a, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

// holdSlot starts a handshake on r that sends an authorized HELLO_I and then
// stays silent, and returns once the responder has answered HELLO_R: from
// then on it holds one of r's slots, until closed.
func holdSlot(t *testing.T, r *Responder, ik *rsa.PrivateKey) (hold net.Conn, done <-chan struct{}) {
	t.Helper()
	hold, holdPeer := tcpPair(t)
	ended := make(chan struct{})
	go func() {
		r.Handshake(context.Background(), holdPeer)
		close(ended)
	}()
	st, err := newInitiator(&Config{PrivateKey: ik})
	if err != nil {
		t.Fatal(err)
	}
	m1, err := st.hello()
	if err != nil {
		t.Fatal(err)
	}
	hold.Write(m1)
	if typ, _, err := readMsg(hold, msgHelloR, msgAlert); err != nil || typ != msgHelloR {
		t.Fatalf("holding handshake: got message %#x, err %v; want HELLO_R", typ, err)
	}
	return hold, ended
}

func TestResponderBusy(t *testing.T) {
	ik, rk, _ := keys()
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: 5 * time.Second}, 1)
	hold, done := holdSlot(t, r, ik)
	a, b := tcpPair(t)
	go r.Handshake(context.Background(), b)
	_, err := Initiate(context.Background(), a, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey})
	var ae *AlertError
	if !errors.As(err, &ae) || ae.Code != AlertBusy || !errors.Is(err, ErrBusy) {
		t.Fatalf("err = %v, want ALERT busy", err)
	}
	hold.Close()
	<-done
}

// TestSilentConnectionsTakeNoSlot: connections that have not sent a
// well-formed HELLO_I naming an authorized key, silent, garbage or with an
// unknown key, leave the slots to real initiators.
func TestSilentConnectionsTakeNoSlot(t *testing.T) {
	ik, rk, other := keys()
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: 5 * time.Second}, 1)
	var ended []chan struct{}
	for _, first := range [][]byte{nil, preface[:3], []byte("GET / HTTP/1.1\r\n")} {
		c, peer := tcpPair(t)
		c.Write(first)
		done := make(chan struct{})
		ended = append(ended, done)
		go func() { r.Handshake(context.Background(), peer); close(done) }()
	}
	// An unknown key is answered at once and holds nothing.
	a, b := tcpPair(t)
	go r.Handshake(context.Background(), b)
	if _, err := Initiate(context.Background(), a, &Config{PrivateKey: other, PeerKey: &rk.PublicKey}); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: err = %v, want ALERT unknown_key", err)
	}
	a, b = tcpPair(t)
	ini, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey}, r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("with silent connections open, a real initiator failed: initiator %v; responder %v", ini.err, res.err)
	}
	for _, done := range ended {
		<-done
	}
}

// TestHelloTimeout: the preface and HELLO_I must arrive within
// HelloTimeout, however long the whole handshake may take.
func TestHelloTimeout(t *testing.T) {
	ik, rk, _ := keys()
	const whole = 30 * time.Second
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: whole}, 4)
	st, err := newInitiator(&Config{PrivateKey: ik})
	if err != nil {
		t.Fatal(err)
	}
	hello, err := st.hello()
	if err != nil {
		t.Fatal(err)
	}
	for name, sent := range map[string][]byte{"nothing": nil, "part of the preface": preface[:3], "part of HELLO_I": hello[:100]} {
		t.Run(name, func(t *testing.T) {
			a, b := tcpPair(t)
			a.Write(sent)
			start := time.Now()
			_, err := r.Handshake(context.Background(), b)
			d := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "timed out") {
				t.Fatalf("err = %v, want a timeout", err)
			}
			if d < HelloTimeout || d > whole/2 {
				t.Fatalf("cut off after %v, want HelloTimeout (%v), well before the handshake timeout (%v)", d, HelloTimeout, whole)
			}
		})
	}
}

// lateConn delays its second Write (KEY_I, after HELLO_I) by delay.
type lateConn struct {
	net.Conn
	delay  time.Duration
	writes int
}

func (c *lateConn) Write(b []byte) (int, error) {
	if c.writes++; c.writes == 2 {
		time.Sleep(c.delay)
	}
	return c.Conn.Write(b)
}

// TestHelloTimeoutOnlyBoundsHello: after HELLO_I, the initiator has
// KeyIDeadline (here the rest of the handshake timeout), not HelloTimeout.
func TestHelloTimeoutOnlyBoundsHello(t *testing.T) {
	ik, rk, _ := keys()
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: 3 * HelloTimeout, KeyIDeadline: 3 * HelloTimeout}, 4)
	a, b := tcpPair(t)
	slow := &lateConn{Conn: a, delay: HelloTimeout + 500*time.Millisecond}
	ini, res := runBoth(t, slow, b, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey}, r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("KEY_I %v after HELLO_R: initiator %v; responder %v", slow.delay, ini.err, res.err)
	}
}

// TestRSAWaitHonoursDeadline: a handshake queued for a private-key slot
// gives up at its deadline, without signing.
func TestRSAWaitHonoursDeadline(t *testing.T) {
	ik, rk, _ := keys()
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: 300 * time.Millisecond}, 4)
	r.adm.cpu.limit = func() int { return 1 }
	release, err := r.adm.cpu.acquire(context.Background()) // every private-key slot busy
	if err != nil {
		t.Fatal(err)
	}
	a, b := tcpPair(t)
	done := make(chan outcome, 1)
	go func() {
		res, err := r.Handshake(context.Background(), b)
		done <- outcome{res, err}
	}()
	_, err = Initiate(context.Background(), a, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Timeout: time.Minute})
	if err == nil {
		t.Fatal("handshake succeeded with no private-key slot")
	}
	var ae *AlertError
	if errors.As(err, &ae) {
		t.Fatalf("initiator got %v, want the connection closed without HELLO_R", err)
	}
	select {
	case o := <-done:
		if o.err == nil || !strings.Contains(o.err.Error(), "timed out waiting for one of the 1 private-key slots") {
			t.Fatalf("responder: err = %v, want a timeout waiting for a private-key slot", o.err)
		}
	case <-time.After(10 * time.Second):
		release() // let it go, so that the test ends
		t.Fatal("responder still waiting for a private-key slot 10s after its 300ms deadline")
	}
}

func TestParsersAreStrict(t *testing.T) {
	v := loadHandshakeVector(t)
	m1, m2, m3 := unhex(t, v.Msg1), unhex(t, v.Msg2), unhex(t, v.Msg3)
	parsers := []struct {
		name  string
		body  []byte
		parse func([]byte) error
	}{
		{"HELLO_I", m1[prefaceLen+msgHeaderLen:], func(b []byte) error { _, err := parseHelloI(b); return err }},
		{"HELLO_R", m2[msgHeaderLen:], func(b []byte) error { _, err := parseHelloR(b); return err }},
		{"KEY_I", m3[msgHeaderLen:], func(b []byte) error { _, err := parseKeyI(b); return err }},
		{"ALERT", (&alert{code: 4, reason: "why"}).body(), func(b []byte) error { _, err := parseAlert(b); return err }},
	}
	for _, p := range parsers {
		if err := p.parse(p.body); err != nil {
			t.Fatalf("%s: valid body rejected: %v", p.name, err)
		}
		if err := p.parse(append(bytes.Clone(p.body), 0)); !errors.Is(err, errMalformed) {
			t.Errorf("%s with a trailing byte: err = %v", p.name, err)
		}
		for cut := 0; cut < len(p.body); cut += 1 + len(p.body)/50 {
			if err := p.parse(p.body[:cut]); !errors.Is(err, errMalformed) {
				t.Errorf("%s cut to %d bytes: err = %v", p.name, cut, err)
			}
		}
	}
	// An ML-KEM ciphertext of the wrong length cannot parse as HELLO_R.
	hr, _ := parseHelloR(m2[msgHeaderLen:])
	hr.mlkemCT = hr.mlkemCT[:mlkemCTLen-1]
	if _, err := parseHelloR(hr.body()); err == nil {
		t.Error("HELLO_R with a short ML-KEM ciphertext parsed")
	}
}

// TestWipeSecrets: once the record layer holds the traffic secrets, the
// handshake's intermediate secrets are cleared.
func TestWipeSecrets(t *testing.T) {
	secret, xs, ms := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	s, err := deriveSchedule([]byte("m1"), []byte("m2"), []byte("m3"), secret, xs, ms)
	if err != nil {
		t.Fatal(err)
	}
	if s.i2r == [32]byte{} || s.r2i == [32]byte{} || len(s.prk) == 0 {
		t.Fatal("deriveSchedule produced empty secrets")
	}
	s.wipeSecrets(secret, xs, ms)
	for name, b := range map[string][]byte{"prk": s.prk, "i2r": s.i2r[:], "r2i": s.r2i[:], "secret": secret, "x25519": xs, "ML-KEM": ms} {
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Errorf("%s not wiped", name)
		}
	}
}
