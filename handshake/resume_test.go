package handshake

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

// sessionStore is a SessionLookup over a map, as the session layer keeps.
type sessionStore struct {
	mu      sync.Mutex
	tickets map[[SessionIDLen]byte]Ticket
	lookups int
}

func (s *sessionStore) Resumable(id [SessionIDLen]byte) (Ticket, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lookups++
	t, ok := s.tickets[id]
	return t, ok
}

func (s *sessionStore) add(t Ticket) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tickets == nil {
		s.tickets = map[[SessionIDLen]byte]Ticket{}
	}
	s.tickets[t.ID] = t
}

const testWindow = 60 * time.Second

// resumeInitiatorCfg is a version 2 initiator offering resumption.
func resumeInitiatorCfg() *Config {
	ik, rk, _ := keys()
	return &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: Version2, ResumeWindow: testWindow}
}

// resumeResponder is a responder that accepts resumption and looks
// sessions up in store; mod changes its configuration.
func resumeResponder(t *testing.T, store *sessionStore, mod func(*Config)) *Responder {
	t.Helper()
	ik, rk, _ := keys()
	cfg := Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey), Timeout: 5 * time.Second, ResumeWindow: testWindow, Sessions: store}
	if mod != nil {
		mod(&cfg)
	}
	r, err := NewResponder(cfg, 4)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fullWithTickets runs a full handshake that negotiates resumption and
// returns both tickets, the responder's stored in store.
func fullWithTickets(t *testing.T, r *Responder, store *sessionStore) (ini, res Ticket) {
	t.Helper()
	a, b := tcpPair(t)
	io, ro := runBoth(t, a, b, resumeInitiatorCfg(), r)
	if io.err != nil || ro.err != nil {
		t.Fatalf("initiator: %v; responder: %v", io.err, ro.err)
	}
	if io.res.Ticket == nil || ro.res.Ticket == nil {
		t.Fatalf("resumption not negotiated: tickets %v, %v", io.res.Ticket, ro.res.Ticket)
	}
	store.add(*ro.res.Ticket)
	return *io.res.Ticket, *ro.res.Ticket
}

// resumeBoth runs Resume on a and the responder on b, concurrently.
func resumeBoth(t *testing.T, a, b net.Conn, icfg *Config, tk Ticket, r *Responder) (ini, res outcome) {
	t.Helper()
	done := make(chan outcome, 1)
	go func() {
		rr, err := r.Handshake(context.Background(), b)
		done <- outcome{rr, err}
	}()
	ir, err := Resume(context.Background(), a, icfg, tk)
	ini, res = outcome{ir, err}, <-done
	t.Cleanup(func() {
		for _, o := range []outcome{ini, res} {
			if o.res != nil {
				o.res.Conn.Close()
			}
		}
	})
	return ini, res
}

// TestResumptionNegotiated: both sides get the same ticket, naming each
// other's keys and the responder's window, and a connection with ACKs.
func TestResumptionNegotiated(t *testing.T) {
	ik, rk, _ := keys()
	store := &sessionStore{}
	r := resumeResponder(t, store, func(c *Config) { c.ResumeWindow = 1500 * time.Millisecond })
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, resumeInitiatorCfg(), r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("initiator: %v; responder: %v", ini.err, res.err)
	}
	it, rt := ini.res.Ticket, res.res.Ticket
	if it == nil || rt == nil {
		t.Fatal("no ticket")
	}
	if it.ID != rt.ID || it.Secret != rt.Secret || it.Secret == [32]byte{} {
		t.Fatal("the two tickets differ, or the secret is zero")
	}
	if it.PeerKeyID != KeyID(&rk.PublicKey) || rt.PeerKeyID != KeyID(&ik.PublicKey) {
		t.Fatal("tickets name the wrong peer keys")
	}
	if it.Window != 2*time.Second || rt.Window != 2*time.Second {
		t.Fatalf("windows %v and %v, want 2s (1.5s rounded up)", it.Window, rt.Window)
	}
	if ini.res.Resumed != nil || res.res.Resumed != nil {
		t.Fatal("a full handshake reported as resumed")
	}
	checkAcks(t, ini.res.Conn, res.res.Conn)
}

// checkAcks sends an ACK each way, then data, and checks that the ACKs
// arrived first.
func checkAcks(t *testing.T, ic, rc *frame.Conn) {
	t.Helper()
	type got struct {
		received uint64
		reply    bool
	}
	var mu sync.Mutex
	var seen []got
	for _, c := range []*frame.Conn{ic, rc} {
		c.SetOnAck(func(received uint64, reply bool) {
			mu.Lock()
			seen = append(seen, got{received, reply})
			mu.Unlock()
		})
	}
	go func() {
		ic.WriteAck(7, true)
		ic.Write([]byte("i"))
	}()
	go func() {
		rc.WriteAck(9, false)
		rc.Write([]byte("r"))
	}()
	buf := make([]byte, 1)
	if _, err := io.ReadFull(rc, buf); err != nil || buf[0] != 'i' {
		t.Fatalf("responder read %q, %v", buf, err)
	}
	if _, err := io.ReadFull(ic, buf); err != nil || buf[0] != 'r' {
		t.Fatalf("initiator read %q, %v", buf, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || !(seen[0] == got{7, true} && seen[1] == got{9, false}) {
		t.Fatalf("ACKs seen: %v", seen)
	}
}

// TestResumeAndData: a session resumes on a new connection, twice, each
// time with an ACK first each way and data after; an old ticket keeps
// working (no ratchet), and the responder names the session.
func TestResumeAndData(t *testing.T) {
	for name, transport := range map[string]func(*testing.T) (net.Conn, net.Conn){
		"tcp":  tcpPair,
		"pipe": func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() },
	} {
		t.Run(name, func(t *testing.T) {
			ik, rk, _ := keys()
			store := &sessionStore{}
			r := resumeResponder(t, store, nil)
			it, _ := fullWithTickets(t, r, store)
			for round := range 2 {
				a, b := transport(t)
				ini, res := resumeBoth(t, a, b, resumeInitiatorCfg(), it, r)
				if ini.err != nil || res.err != nil {
					t.Fatalf("round %d: initiator: %v; responder: %v", round, ini.err, res.err)
				}
				if ini.res.Resumed == nil || *ini.res.Resumed != it.ID || res.res.Resumed == nil || *res.res.Resumed != it.ID {
					t.Fatalf("round %d: Resumed %v / %v, want %x", round, ini.res.Resumed, res.res.Resumed, it.ID)
				}
				if ini.res.Ticket != nil || res.res.Ticket != nil || ini.res.Version != Version2 || res.res.Version != Version2 {
					t.Fatalf("round %d: results %+v / %+v", round, ini.res, res.res)
				}
				if ini.res.PeerFingerprint != Fingerprint(&rk.PublicKey) || res.res.PeerFingerprint != Fingerprint(&ik.PublicKey) {
					t.Fatalf("round %d: peer fingerprints", round)
				}
				checkAcks(t, ini.res.Conn, res.res.Conn)
			}
			if held, _ := r.adm.slots.counts(); held != 0 {
				t.Fatalf("%d slots still held", held)
			}
		})
	}
}

// TestResumptionOff: resumption is negotiated only when both sides turn
// it on in version 2; otherwise no ticket, no ACKs, and the bytes of the
// version 2 hellos carry no extension.
func TestResumptionOff(t *testing.T) {
	ik, rk, _ := keys()
	for _, tc := range []struct {
		name string
		icfg *Config
		rmod func(*Config)
	}{
		{"initiator off", &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: Version2}, nil},
		{"responder off", resumeInitiatorCfg(), func(c *Config) { c.ResumeWindow = 0 }},
		{"version 1", &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: Version1, ResumeWindow: testWindow}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := resumeResponder(t, &sessionStore{}, tc.rmod)
			a, b := tcpPair(t)
			ini, res := runBoth(t, a, b, tc.icfg, r)
			if ini.err != nil || res.err != nil {
				t.Fatalf("initiator: %v; responder: %v", ini.err, res.err)
			}
			if ini.res.Ticket != nil || res.res.Ticket != nil {
				t.Fatal("resumption negotiated")
			}
			if err := ini.res.Conn.WriteAck(1, false); !errors.Is(err, frame.ErrNoAcks) {
				t.Fatalf("WriteAck: %v, want frame.ErrNoAcks", err)
			}
		})
	}
	// An initiator with resumption off does not Resume.
	a, _ := tcpPair(t)
	cfg := resumeInitiatorCfg()
	cfg.ResumeWindow = 0
	if _, err := Resume(context.Background(), a, cfg, Ticket{PeerKeyID: KeyID(&rk.PublicKey)}); err == nil {
		t.Fatal("Resume with ResumeWindow 0 succeeded")
	}
}

// TestResumeUnpinnedPeer: a ticket naming a responder key that is no longer
// pinned is refused before anything is sent.
func TestResumeUnpinnedPeer(t *testing.T) {
	_, _, other := keys()
	a, b := tcpPair(t)
	_, err := Resume(context.Background(), a, resumeInitiatorCfg(), Ticket{PeerKeyID: KeyID(&other.PublicKey)})
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	b.SetReadDeadline(time.Now().Add(time.Second))
	if got, _ := io.ReadAll(b); len(got) != 0 {
		t.Fatalf("sent %d bytes", len(got))
	}
}

// resumeMsg returns preface || RESUME_I for ticket tk from initiator key ik,
// changed by mod before the MAC is computed under the ticket's secret.
func resumeMsg(t *testing.T, ik *rsa.PrivateKey, tk Ticket, mod func(*resumeI)) []byte {
	t.Helper()
	_, rk, _ := keys()
	st, err := newResumer(&Config{PrivateKey: ik, PeerKey: &rk.PublicKey, ResumeWindow: testWindow}, Ticket{ID: tk.ID, Secret: tk.Secret, PeerKeyID: KeyID(&rk.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	m1 := st.resumeI()
	if mod == nil {
		return m1
	}
	ri, err := parseResumeI(m1[prefaceLen+msgHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	mod(ri)
	ri.mac = resumeMAC(st.keys.i, ri.signedMsg(prefaceV2[:]))
	return ri.msg(prefaceV2[:])
}

// TestResumeRefusedBeforeAnyCost: each RESUME_I refused here costs no slot
// and no private-key operation, and gets the right ALERT.
func TestResumeRefusedBeforeAnyCost(t *testing.T) {
	ik, _, other := keys()
	store := &sessionStore{}
	tk := Ticket{ID: [SessionIDLen]byte{1, 2, 3}, Secret: [32]byte{9}, PeerKeyID: KeyID(&ik.PublicKey), Window: testWindow}
	store.add(tk)
	// A session whose initiator key has since been removed from the
	// authorized keys.
	gone := Ticket{ID: [SessionIDLen]byte{4}, Secret: [32]byte{8}, PeerKeyID: KeyID(&other.PublicKey), Window: testWindow}
	store.add(gone)
	valid := resumeMsg(t, ik, tk, nil)
	cases := []struct {
		name  string
		rmod  func(*Config)
		send  []byte
		alert AlertCode
		err   error
	}{
		{"unknown session", nil, resumeMsg(t, ik, Ticket{ID: [SessionIDLen]byte{7}, Secret: tk.Secret}, nil), AlertUnknownSession, ErrUnknownSession},
		{"resumption off", func(c *Config) { c.ResumeWindow = 0 }, valid, AlertUnknownSession, ErrUnknownSession},
		{"no session store", func(c *Config) { c.Sessions = nil }, valid, AlertUnknownSession, ErrUnknownSession},
		{"another key than the session's", func(c *Config) { c.Authorized = mustKeySet(t, &ik.PublicKey, &other.PublicKey) },
			resumeMsg(t, other, tk, nil), AlertUnknownKey, ErrUnknownKey},
		{"the session's key no longer authorized", nil, resumeMsg(t, other, gone, nil), AlertUnknownKey, ErrUnknownKey},
		{"wrong secret", nil, resumeMsg(t, ik, Ticket{ID: tk.ID, Secret: [32]byte{10}}, nil), AlertBadSignature, ErrBadSignature},
		{"MAC flipped", nil, func() []byte { m := bytes.Clone(valid); m[len(m)-1] ^= 1; return m }(), AlertBadSignature, ErrBadSignature},
		{"body one byte short", nil, func() []byte {
			m := bytes.Clone(valid[:len(valid)-1])
			m[prefaceLen+3]--
			return m
		}(), AlertProtocolError, ErrProtocol},
		{"body one byte long", nil, func() []byte {
			m := append(bytes.Clone(valid), 0)
			m[prefaceLen+3]++
			return m
		}(), AlertProtocolError, ErrProtocol},
		{"after a version 1 preface", nil, append(bytes.Clone(preface[:]), valid[prefaceLen:]...), AlertProtocolError, ErrProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := resumeResponder(t, store, tc.rmod)
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

// recordConn records what is written to it.
type recordConn struct {
	net.Conn
	mu sync.Mutex
	w  bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.w.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestResumeReplayed: an eavesdropper who recorded a whole resumption
// replays RESUME_I and RESUME_F. RESUME_I passes (it is genuine) and costs
// a slot until RESUME_F, whose MAC covers the first connection's
// RESUME_R, not this one's: ALERT bad_signature, and the slot is free
// again.
func TestResumeReplayed(t *testing.T) {
	store := &sessionStore{}
	r := resumeResponder(t, store, nil)
	it, _ := fullWithTickets(t, r, store)
	a, b := tcpPair(t)
	rec := &recordConn{Conn: a}
	ini, res := resumeBoth(t, rec, b, resumeInitiatorCfg(), it, r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("initiator: %v; responder: %v", ini.err, res.err)
	}
	sent := rec.w.Bytes()
	m1 := sent[:prefaceLen+msgHeaderLen+resumeIBody]
	m3 := sent[len(m1) : len(m1)+msgHeaderLen+resumeFBody]
	if m3[0] != msgResumeF {
		t.Fatalf("recorded %x, not RESUME_F", m3[:4])
	}
	taken := r.adm.slotsTaken.Load()

	a, b = tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := r.Handshake(context.Background(), b)
		done <- err
	}()
	a.Write(m1)
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, m2, err := readMsg(a, msgResumeR, msgAlert)
	if err != nil || typ != msgResumeR {
		t.Fatalf("replayed RESUME_I: %x, %v; want RESUME_R", typ, err)
	}
	if bytes.Contains(sent, m2) {
		t.Fatal("the responder sent the same RESUME_R again")
	}
	a.Write(m3)
	reply, _ := io.ReadAll(a)
	if err := <-done; !errors.Is(err, ErrBadSignature) {
		t.Fatalf("replayed RESUME_F: responder err = %v, want ErrBadSignature", err)
	}
	if al := readAlert(t, reply); al.code != AlertBadSignature {
		t.Fatalf("ALERT %v, want bad_signature", al.code)
	}
	if got := r.adm.slotsTaken.Load() - taken; got != 1 {
		t.Fatalf("the replay took %d slots, want 1", got)
	}
	if held, unverified := r.adm.slots.counts(); held != 0 || unverified != 0 {
		t.Fatalf("after the replay: %d slots held, %d unverified", held, unverified)
	}
	if r.adm.privateOps.Load() != 2 { // the full handshake's signature and decryption
		t.Fatalf("%d private-key operations, want the full handshake's 2", r.adm.privateOps.Load())
	}
}

// TestResumeUnknownSessionFallsBack: ALERT unknown_session reaches Resume's
// caller as ErrUnknownSession, not lasting; the full handshake that follows
// works and makes a new session.
func TestResumeUnknownSessionFallsBack(t *testing.T) {
	store := &sessionStore{}
	r := resumeResponder(t, store, nil)
	it, _ := fullWithTickets(t, r, store)
	store.mu.Lock()
	delete(store.tickets, it.ID) // the window passed
	store.mu.Unlock()
	a, b := tcpPair(t)
	ini, res := resumeBoth(t, a, b, resumeInitiatorCfg(), it, r)
	var ae *AlertError
	if !errors.Is(ini.err, ErrUnknownSession) || !errors.As(ini.err, &ae) || Classify(ini.err) != FailUnknownSession || Classify(ini.err).Lasting() {
		t.Fatalf("initiator err = %v (%v), want ALERT unknown_session", ini.err, Classify(ini.err))
	}
	if !errors.Is(res.err, ErrUnknownSession) {
		t.Fatalf("responder err = %v", res.err)
	}
	it2, _ := fullWithTickets(t, r, store)
	if it2.ID == it.ID || it2.Secret == it.Secret {
		t.Fatal("the new session reuses the old one's id or secret")
	}
}

// TestResumptionExtensionChecks: HELLO_R's resumption extension is refused
// (ALERT protocol_error) when the hello did not offer it, when its value
// is not 20 bytes, or when its window is 0; HELLO_I's offer must be empty.
func TestResumptionExtensionChecks(t *testing.T) {
	ik, rk, _ := keys()
	accept := func(id byte, window uint32) []byte {
		a := &resumptionAccept{id: [SessionIDLen]byte{id}, window: window}
		return a.value()
	}
	for _, tc := range []struct {
		name    string
		offered bool
		val     []byte
		ok      bool
	}{
		{"accepted as offered", true, accept(1, 60), true},
		{"not offered", false, accept(1, 60), false},
		{"window 0", true, accept(1, 0), false},
		{"19 bytes", true, accept(1, 60)[:19], false},
		{"21 bytes", true, append(accept(1, 60), 0), false},
		{"empty", true, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			icfg := &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: Version2}
			if tc.offered {
				icfg.ResumeWindow = testWindow
			}
			ini, err := newInitiator(icfg)
			if err != nil {
				t.Fatal(err)
			}
			m1, err := ini.hello()
			if err != nil {
				t.Fatal(err)
			}
			res := &responder{cfg: &Config{PrivateKey: rk, Authorized: mustKeySet(t, &ik.PublicKey)}, version: Version2, m1: m1}
			hi, err := res.checkHelloI2(m1[prefaceLen:])
			if err != nil {
				t.Fatal(err)
			}
			m2, err := res.helloR(context.Background(), &hi.helloI)
			if err != nil {
				t.Fatal(err)
			}
			// The responder's HELLO_R with the extension of the case, signed again.
			h2, _ := parseHelloR2(m2[msgHeaderLen:])
			h2.ext = appendExtensions(nil, extension{typ: extResumption, val: tc.val})
			if h2.sig, err = sign(rk, contextResponder2, digest(m1, h2.signedBody())); err != nil {
				t.Fatal(err)
			}
			err = ini.handleHelloR(appendMsg(nil, msgHelloR, h2.body()))
			if tc.ok {
				if err != nil || ini.ticket == nil || ini.ticket.ID != [SessionIDLen]byte{1} || ini.ticket.Window != time.Minute {
					t.Fatalf("err %v, ticket %+v", err, ini.ticket)
				}
				return
			}
			if code := alertOf(err); code != AlertProtocolError || !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ALERT protocol_error", err)
			}
		})
	}

	// A responder refuses an offer that is not empty, before any cost.
	now := time.Now()
	r := resumeResponder(t, &sessionStore{}, func(c *Config) { c.Now = func() time.Time { return now } })
	m1 := helloV2(t, ik, ik, now, func(h *helloI2) { h.ext = appendExtensions(nil, extension{typ: extResumption, val: []byte{0}}) })
	reply, err := rawExchange(t, r, m1)
	if !errors.Is(err, ErrProtocol) || readAlert(t, reply).code != AlertProtocolError {
		t.Fatalf("non-empty offer: %v", err)
	}
	if ops, taken := r.adm.privateOps.Load(), r.adm.slotsTaken.Load(); ops != 0 || taken != 0 {
		t.Fatalf("refusal cost %d private-key operations and %d slots", ops, taken)
	}
}

// TestBogusResumptionFlood: many RESUME_I of every bogus kind cost no slot,
// no private-key operation, and keep nothing; a real resumption works
// meanwhile.
func TestBogusResumptionFlood(t *testing.T) {
	ik, _, other := keys()
	store := &sessionStore{}
	r := resumeResponder(t, store, func(c *Config) { c.Authorized = mustKeySet(t, &ik.PublicKey, &other.PublicKey) })
	it, rt := fullWithTickets(t, r, store)
	ops, taken := r.adm.privateOps.Load(), r.adm.slotsTaken.Load()
	flipped := resumeMsg(t, ik, rt, nil)
	flipped[prefaceLen+msgHeaderLen+SessionIDLen+KeyIDLen] ^= 1 // random_i, after the MAC was made
	bogus := [][]byte{
		resumeMsg(t, ik, Ticket{ID: [SessionIDLen]byte{0xee}, Secret: rt.Secret}, nil), // unknown session
		resumeMsg(t, other, rt, nil),                                  // another authorized key
		resumeMsg(t, ik, Ticket{ID: rt.ID, Secret: [32]byte{1}}, nil), // not the secret
		flipped, // a bad MAC
	}
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			a, b := tcpPair(t)
			done := make(chan struct{})
			go func() { r.Handshake(context.Background(), b); close(done) }()
			a.Write(bogus[i%len(bogus)])
			a.SetReadDeadline(time.Now().Add(5 * time.Second))
			if typ, _, err := readMsg(a, msgAlert); err != nil || typ != msgAlert {
				t.Errorf("bogus RESUME_I %d: %x, %v; want an ALERT", i%len(bogus), typ, err)
			}
			a.Close()
			<-done
		})
	}
	a, b := tcpPair(t)
	ini, res := resumeBoth(t, a, b, resumeInitiatorCfg(), it, r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("real resumption during the flood: %v; %v", ini.err, res.err)
	}
	wg.Wait()
	if got := r.adm.slotsTaken.Load() - taken; got != 1 {
		t.Fatalf("%d slots taken, want 1 (the real resumption's)", got)
	}
	if r.adm.privateOps.Load() != ops {
		t.Fatal("a resumption cost a private-key operation")
	}
}
