package handshake

import (
	"context"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

func initiatorCfg(version int, fallback bool) *Config {
	ik, rk, _ := keys()
	return &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: version, Fallback: fallback}
}

// TestVersions: every pair of what an initiator speaks and what a responder
// accepts that should agree does, on the version the initiator spoke, over
// pipes and TCP; data flows both ways.
func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		want    int
	}{{"default is 1", 0, 1}, {"1", Version1, 1}, {"2", Version2, 2}} {
		for name, transport := range map[string]func(*testing.T) (net.Conn, net.Conn){
			"tcp":  tcpPair,
			"pipe": func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() },
		} {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				ik, rk, _ := keys()
				a, b := transport(t)
				ini, res := runBoth(t, a, b, initiatorCfg(tc.version, false), newResponder(t, rk, &ik.PublicKey))
				if ini.err != nil || res.err != nil {
					t.Fatalf("initiator: %v; responder: %v", ini.err, res.err)
				}
				if ini.res.Version != tc.want || res.res.Version != tc.want {
					t.Fatalf("versions spoken: initiator %d, responder %d; want %d", ini.res.Version, res.res.Version, tc.want)
				}
				go func() {
					ini.res.Conn.Write([]byte("ping"))
					ini.res.Conn.CloseWrite()
				}()
				if got, err := io.ReadAll(res.res.Conn); err != nil || string(got) != "ping" {
					t.Fatalf("responder read %q, %v", got, err)
				}
			})
		}
	}
}

// TestFallbackToV1OnlyResponder: a version 2 initiator meets a responder of
// version 1 alone; it is refused with an error the caller recognises, and
// the caller's redial with Version1 and Fallback succeeds (a responder of
// version 1 ignores the suite it does not know).
func TestFallbackToV1OnlyResponder(t *testing.T) {
	ik, rk, _ := keys()
	r := newResponder(t, rk, &ik.PublicKey)
	r.v1Only = true
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, initiatorCfg(Version2, false), r)
	var ae *AlertError
	if !errors.Is(ini.err, ErrUnsupportedVersion) || !errors.As(ini.err, &ae) || ae.Code != AlertUnsupportedVersion {
		t.Fatalf("version 2 to a version 1 responder: initiator err = %v, want ALERT unsupported_version", ini.err)
	}
	if !errors.Is(res.err, ErrUnsupportedVersion) {
		t.Fatalf("responder err = %v", res.err)
	}
	a, b = tcpPair(t) // the caller's redial
	ini, res = runBoth(t, a, b, initiatorCfg(Version1, true), r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("fallback: initiator: %v; responder: %v", ini.err, res.err)
	}
	if ini.res.Version != Version1 {
		t.Fatalf("fallback spoke version %d", ini.res.Version)
	}
}

func TestConfigVersions(t *testing.T) {
	ik, rk, _ := keys()
	for _, c := range []Config{
		{Version: 3}, {MinVersion: 3}, {Version: -1}, {Version: Version2, Fallback: true},
	} {
		c.PrivateKey, c.PeerKey, c.Authorized = ik, &rk.PublicKey, mustKeySet(t, &ik.PublicKey)
		if err := c.checkInitiator(); err == nil {
			t.Errorf("initiator accepted %+v", c)
		}
		if _, err := NewResponder(c, 1); err == nil {
			t.Errorf("responder accepted %+v", c)
		}
	}
}

// helloV2 returns M1 of a version 2 initiator with key ik at time now, its
// HELLO_I changed by mod and signed again by signer.
func helloV2(t *testing.T, ik, signer *rsa.PrivateKey, now time.Time, mod func(*helloI2)) []byte {
	t.Helper()
	st, err := newInitiator(&Config{PrivateKey: ik, Version: Version2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	m1, err := st.hello()
	if err != nil {
		t.Fatal(err)
	}
	if mod == nil && signer == ik {
		return m1
	}
	hi, err := parseHelloI2(m1[prefaceLen+msgHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(hi)
	}
	hi.sig, err = sign(signer, contextHello2, digest(hi.signedMsg(prefaceV2[:], signer.Size())))
	if err != nil {
		t.Fatal(err)
	}
	return appendMsg(prefaceV2[:], msgHelloI, hi.body())
}

// helloV1 returns M1 of a version 1 initiator naming keyID, with suites.
func helloV1(t *testing.T, keyID [KeyIDLen]byte, suites ...byte) []byte {
	t.Helper()
	ik, _, _ := keys()
	st, err := newInitiator(&Config{PrivateKey: ik})
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := st.hello()
	hi, err := parseHelloI(m1[prefaceLen+msgHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	hi.keyID, hi.suites = keyID, suites
	return appendMsg(preface[:], msgHelloI, hi.body())
}

// TestRefusedBeforeAnyCost: each hello refused here is refused without a
// private-key operation and without taking a slot.
func TestRefusedBeforeAnyCost(t *testing.T) {
	ik, rk, other := keys()
	now := time.Unix(1_800_000_000, 0)
	ikID := KeyID(&ik.PublicKey)
	cases := []struct {
		name  string
		cfg   func(*Config)
		send  []byte
		alert AlertCode
		err   error
	}{
		{"stale time", nil, helloV2(t, ik, ik, now.Add(-HelloSkew-time.Second), nil), AlertStaleHello, ErrStaleHello},
		{"time from the future", nil, helloV2(t, ik, ik, now.Add(HelloSkew+time.Second), nil), AlertStaleHello, ErrStaleHello},
		{"time far off", nil, helloV2(t, ik, ik, now, func(h *helloI2) { h.time = 1 << 63 }), AlertStaleHello, ErrStaleHello},
		{"signed by another key", nil, helloV2(t, ik, other, now, nil), AlertBadSignature, ErrBadSignature},
		{"signature flipped", nil, func() []byte {
			m := helloV2(t, ik, ik, now, nil)
			m[len(m)-5] ^= 1
			return m
		}(), AlertBadSignature, ErrBadSignature},
		{"signature under another context", nil, func() []byte {
			m := helloV2(t, ik, ik, now, nil)
			hi, _ := parseHelloI2(m[prefaceLen+msgHeaderLen:])
			hi.sig, _ = sign(ik, contextResponder2, digest(hi.signedMsg(prefaceV2[:], ik.Size())))
			return appendMsg(prefaceV2[:], msgHelloI, hi.body())
		}(), AlertBadSignature, ErrBadSignature},
		{"unauthorized key id", nil, helloV2(t, other, other, now, nil), AlertUnknownKey, ErrUnknownKey},
		{"no common suite", nil, helloV2(t, ik, ik, now, func(h *helloI2) { h.suites = []byte{7} }), AlertNoCommonSuite, ErrNoCommonSuite},
		{"duplicate extension", nil, helloV2(t, ik, ik, now, func(h *helloI2) {
			h.ext = appendExtensions(nil, extension{typ: 0x42}, extension{typ: 0x42, val: []byte{1}})
		}), AlertProtocolError, ErrProtocol},
		{"extension cut short", nil, helloV2(t, ik, ik, now, func(h *helloI2) { h.ext = []byte{0x42, 0, 2, 1} }), AlertProtocolError, ErrProtocol},
		{"version 1 fallback", nil, helloV1(t, ikID, SuiteAES256CFBHMACSHA256, suiteFallback), AlertInappropriateFallback, ErrInappropriateFallback},
		{"version 1 to MinVersion 2", func(c *Config) { c.MinVersion = Version2 }, helloV1(t, ikID, SuiteAES256CFBHMACSHA256), AlertUnsupportedVersion, ErrUnsupportedVersion},
		{"version 1, unauthorized key id", nil, helloV1(t, KeyID(&other.PublicKey), SuiteAES256CFBHMACSHA256), AlertUnknownKey, ErrUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Now: func() time.Time { return now }}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			r, err := NewResponder(cfg, 4)
			if err != nil {
				t.Fatal(err)
			}
			reply, err := rawExchange(t, r, tc.send)
			if !errors.Is(err, tc.err) {
				t.Fatalf("responder err = %v, want %v", err, tc.err)
			}
			if a := readAlert(t, reply); a.code != tc.alert || a.reason == "" {
				t.Fatalf("ALERT %v %q, want %v with a reason", a.code, a.reason, tc.alert)
			}
			if ops, taken := r.adm.privateOps.Load(), r.adm.slotsTaken.Load(); ops != 0 || taken != 0 {
				t.Fatalf("refusal cost %d private-key operations and %d slots, want none", ops, taken)
			}
		})
	}
}

// TestReplayedHello: a version 2 hello is answered once; the same bytes
// again are refused as a replay, at no cost, for as long as they could be
// accepted, and forgotten after.
func TestReplayedHello(t *testing.T) {
	ik, rk, _ := keys()
	now := time.Unix(1_800_000_000, 0)
	clock := now
	r, err := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Now: func() time.Time { return clock }}, 4)
	if err != nil {
		t.Fatal(err)
	}
	m1 := helloV2(t, ik, ik, now, nil)
	reply, _ := rawExchange(t, r, m1)
	if len(reply) == 0 || reply[0] != msgHelloR {
		t.Fatalf("first hello: reply %q, want HELLO_R", reply[:min(len(reply), 8)])
	}
	ops, taken := r.adm.privateOps.Load(), r.adm.slotsTaken.Load()
	for _, d := range []time.Duration{0, HelloSkew} {
		clock = now.Add(d)
		reply, err = rawExchange(t, r, m1)
		if !errors.Is(err, ErrReplayedHello) {
			t.Fatalf("replay %v later: err = %v, want ErrReplayedHello", d, err)
		}
		if a := readAlert(t, reply); a.code != AlertStaleHello {
			t.Fatalf("replay %v later: ALERT %v, want stale_hello", d, a.code)
		}
	}
	if r.adm.privateOps.Load() != ops || r.adm.slotsTaken.Load() != taken {
		t.Fatal("a replay cost a private-key operation or a slot")
	}
	clock = now.Add(HelloSkew + time.Second) // the hello itself is now stale
	if _, err = rawExchange(t, r, m1); !errors.Is(err, ErrStaleHello) {
		t.Fatalf("after the window: err = %v, want ErrStaleHello", err)
	}
}

func TestReplayCacheBound(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := replayCache{max: 2, seen: map[[16]byte]int64{}}
	t0 := uint64(now.Unix())
	for i := range byte(2) {
		if ok, err := c.record([16]byte{i}, t0, now); !ok || err != nil {
			t.Fatalf("record %d: %v, %v", i, ok, err)
		}
	}
	if ok, _ := c.record([16]byte{0}, t0, now); ok {
		t.Fatal("a hello recorded twice")
	}
	if _, err := c.record([16]byte{9}, t0, now); !errors.Is(err, errReplayFull) {
		t.Fatalf("full cache: err = %v, want errReplayFull", err)
	}
	later := now.Add(HelloSkew + time.Second)
	if ok, err := c.record([16]byte{9}, uint64(later.Unix()), later); !ok || err != nil {
		t.Fatalf("after expiry: %v, %v; want the expired hellos swept", ok, err)
	}
	if len(c.seen) != 1 {
		t.Fatalf("%d hellos remembered after the sweep, want 1", len(c.seen))
	}
}

// TestForgedFallback: someone on the path answers a version 2 hello with a
// forged ALERT unsupported_version; the initiator's fallback hello carries
// the signal, and the responder, which speaks version 2, refuses it.
func TestForgedFallback(t *testing.T) {
	ik, rk, _ := keys()
	r := newResponder(t, rk, &ik.PublicKey)
	a, forger := tcpPair(t)
	go func() {
		io.ReadFull(forger, make([]byte, prefaceLen))
		forger.Write(appendMsg(nil, msgAlert, (&alert{code: AlertUnsupportedVersion, reason: "forged"}).body()))
		forger.Close()
	}()
	_, err := Initiate(context.Background(), a, initiatorCfg(Version2, false))
	if !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("forged refusal: err = %v, want ErrUnsupportedVersion", err)
	}
	a, b := tcpPair(t) // the caller's redial reaches the real responder
	ini, res := runBoth(t, a, b, initiatorCfg(Version1, true), r)
	var ae *AlertError
	if !errors.Is(ini.err, ErrInappropriateFallback) || !errors.As(ini.err, &ae) || ae.Code != AlertInappropriateFallback {
		t.Fatalf("fallback to a version 2 responder: initiator err = %v, want ALERT inappropriate_fallback", ini.err)
	}
	if !errors.Is(res.err, ErrInappropriateFallback) {
		t.Fatalf("responder err = %v", res.err)
	}
	if ops, taken := r.adm.privateOps.Load(), r.adm.slotsTaken.Load(); ops != 0 || taken != 0 {
		t.Fatalf("refused fallback cost %d private-key operations and %d slots", ops, taken)
	}
}

// TestSlotHoldingAttack (issue 17 item 1): attackers who know authorized
// key ids, but none of the private keys, open many handshakes and stay
// silent after HELLO_R. Version 1 hellos hold at most an eighth of the
// slots per key id and half in all; version 2 hellos they cannot sign take
// none; a real version 2 initiator still completes.
func TestSlotHoldingAttack(t *testing.T) {
	ik, rk, other := keys()
	// Fifteen more authorized keys: only their ids matter here.
	pubs := []*rsa.PublicKey{&ik.PublicKey}
	for e := 3; len(pubs) < 16; e += 2 {
		pubs = append(pubs, &rsa.PublicKey{N: other.N, E: e})
	}
	const slots = 64
	r, err := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, pubs...), KeyIDeadline: time.Minute, Timeout: time.Minute}, slots)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the connections close (cleanups run last first)
	open := func(send []byte) (reply byte, conn net.Conn) {
		a, b := tcpPair(t)
		wg.Go(func() { r.Handshake(context.Background(), b) })
		a.Write(send)
		typ, _, err := readMsg(a, msgHelloR, msgAlert)
		if err != nil {
			t.Fatalf("reading the reply: %v", err)
		}
		return typ, a
	}
	held := map[[KeyIDLen]byte]int{}
	total := 0
	for round := range 6 {
		for _, p := range pubs {
			if typ, _ := open(helloV1(t, KeyID(p), SuiteAES256CFBHMACSHA256)); typ == msgHelloR {
				held[KeyID(p)]++
				total++
			}
		}
		// Version 2 hellos naming the real key, signed by another.
		if typ, _ := open(helloV2(t, ik, other, time.Now(), nil)); typ != msgAlert {
			t.Fatalf("round %d: a version 2 hello with a forged signature got HELLO_R", round)
		}
	}
	if total != slots/2 {
		t.Errorf("forged version 1 hellos hold %d slots, want %d (half of %d)", total, slots/2, slots)
	}
	for id, n := range held {
		if n > slots/8 {
			t.Errorf("key %s holds %d slots, more than %d", FingerprintID(id), n, slots/8)
		}
	}
	if got := r.adm.privateOps.Load(); got != int64(total) {
		t.Errorf("%d private-key operations for %d held hellos; the forged version 2 hellos must cost none", got, total)
	}
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, initiatorCfg(Version2, false), r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("real version 2 initiator during the attack: initiator %v; responder %v", ini.err, res.err)
	}
	// A version 1 initiator with the same key: from the source that has
	// just completed a handshake with it (127.0.0.1), its hello takes a
	// slot as a signed one does; from another, the unverified half is full.
	a, b = tcpPairFrom(t, "127.0.0.2")
	if ini, _ := runBoth(t, a, b, initiatorCfg(Version1, false), r); !errors.Is(ini.err, ErrBusy) {
		t.Fatalf("version 1 initiator from a new source during the attack: %v, want ALERT busy (its half is full)", ini.err)
	}
	a, b = tcpPair(t)
	if ini, res := runBoth(t, a, b, initiatorCfg(Version1, false), r); ini.err != nil || res.err != nil {
		t.Fatalf("version 1 initiator from a source with a recent handshake: initiator %v; responder %v", ini.err, res.err)
	}
}

// TestKeyIDeadline: a peer silent after HELLO_R loses its slot after
// KeyIDeadline, long before the handshake's timeout.
func TestKeyIDeadline(t *testing.T) {
	ik, rk, _ := keys()
	const whole = time.Minute
	r, _ := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: whole, KeyIDeadline: 100 * time.Millisecond}, 4)
	hold, done := holdSlot(t, r, ik)
	defer hold.Close()
	select {
	case <-done:
	case <-time.After(whole / 2):
		t.Fatalf("the silent handshake still holds its slot after %v", whole/2)
	}
	if held, unverified := r.adm.slots.counts(); held != 0 || unverified != 0 {
		t.Fatalf("after the silent handshake ended: %d slots held, %d unverified", held, unverified)
	}
}

// TestCPULimitFollowsGOMAXPROCS (issue 17 item 8): the private-key limit is
// read when used, so that lowering GOMAXPROCS after NewResponder lowers it.
func TestCPULimitFollowsGOMAXPROCS(t *testing.T) {
	ik, rk, _ := keys()
	prev := runtime.GOMAXPROCS(4)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	r := newResponder(t, rk, &ik.PublicKey)
	runtime.GOMAXPROCS(2) // as cmd/tunnel does once the agents are built: one private-key operation at a time
	done, cancel := context.WithCancel(context.Background())
	cancel()
	release, err := r.adm.cpu.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.adm.cpu.acquire(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("second operation with GOMAXPROCS 2: err = %v, want to wait (and give up)", err)
	}
	runtime.GOMAXPROCS(3)
	release2, err := r.adm.cpu.acquire(done)
	if err != nil {
		t.Fatalf("second operation with GOMAXPROCS 3: %v", err)
	}
	release2()
	// A waiter wakes when an operation ends.
	runtime.GOMAXPROCS(2)
	got := make(chan error, 1)
	go func() {
		rel, err := r.adm.cpu.acquire(context.Background())
		if err == nil {
			rel()
		}
		got <- err
	}()
	release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// TestVerifiedV1LeavesUnverifiedCount: a version 1 handshake whose sig_i
// verified no longer counts against the version 1 caps.
func TestVerifiedV1LeavesUnverifiedCount(t *testing.T) {
	var s slots
	s.max, s.byKey = 2, map[[KeyIDLen]byte]int{}
	id := [KeyIDLen]byte{1}
	a, err := s.take(false, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.take(false, id); !errors.Is(err, ErrBusy) {
		t.Fatalf("second unverified slot of 2: err = %v, want busy", err)
	}
	a.verified()
	b, err := s.take(false, id)
	if err != nil {
		t.Fatalf("after the first verified: %v", err)
	}
	if _, err := s.take(true, id); !errors.Is(err, ErrBusy) {
		t.Fatalf("third slot of 2: err = %v, want busy", err)
	}
	a.release()
	a.release()
	b.release()
	if held, unverified := s.counts(); held != 0 || unverified != 0 || len(s.byKey) != 0 {
		t.Fatalf("after release: %d held, %d unverified, %d keys", held, unverified, len(s.byKey))
	}
}

func TestExtensions(t *testing.T) {
	block := appendExtensions(nil, extension{typ: extResumption, val: []byte("ticket")}, extension{typ: 0x7f})
	exts, err := parseExtensions(block)
	if err != nil || len(exts) != 2 || exts[0].typ != extResumption || string(exts[0].val) != "ticket" || exts[1].typ != 0x7f || len(exts[1].val) != 0 {
		t.Fatalf("round trip: %+v, %v", exts, err)
	}
	for name, b := range map[string][]byte{
		"duplicate":     appendExtensions(nil, extension{typ: 1}, extension{typ: 1}),
		"cut header":    {1, 0},
		"cut value":     {1, 0, 3, 'a', 'b'},
		"trailing byte": append(appendExtensions(nil, extension{typ: 1}), 2),
	} {
		if _, err := parseExtensions(b); !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want malformed", name, err)
		}
	}
}
