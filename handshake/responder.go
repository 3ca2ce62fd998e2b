package handshake

import (
	"context"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake/wiretext"
)

// DefaultMaxInProgress bounds concurrent responder handshakes when
// NewResponder is given zero.
const DefaultMaxInProgress = 64

// Responder answers handshakes of versions 1 and 2 (or 2 only, with
// Config.MinVersion). It bounds how many run at once: past the bound, a new
// initiator is answered ALERT busy and closed. It is safe for concurrent
// use.
type Responder struct {
	cfg Config
	adm *admission // slots, private-key limit, replay cache: shared with WithKeys
	// v1Only makes it answer as a responder of PROTOCOL.md alone: ALERT
	// unsupported_version to any other preface, and no notice of the
	// fallback suite. Tests of the fallback set it.
	v1Only bool
}

// NewResponder checks cfg and returns a Responder allowing maxInProgress
// concurrent handshakes (zero means DefaultMaxInProgress), at most half of
// them version 1 handshakes before KEY_I (see admission.go).
func NewResponder(cfg Config, maxInProgress int) (*Responder, error) {
	if err := cfg.checkResponder(); err != nil {
		return nil, err
	}
	if maxInProgress <= 0 {
		maxInProgress = DefaultMaxInProgress
	}
	return &Responder{cfg: cfg, adm: newAdmission(maxInProgress)}, nil
}

// Refuse answers conn with ALERT busy and closes it, without any private
// key work: for callers that shed load before a handshake (rate limits).
func (r *Responder) Refuse(conn net.Conn, reason string) {
	closeAfterAlert(conn, reject(AlertBusy, reason, "%s", reason))
}

// rsaSlot waits for one of the private-key slots, so that a flood of
// handshakes queues for CPU instead of oversubscribing it, and returns the
// function that gives it back. It gives up when ctx ends or the handshake's
// deadline passes, so that a handshake that has run out of time does no
// private-key work. It counts the operation it allows.
func (st *responder) rsaSlot(ctx context.Context) (release func(), err error) {
	if st.adm == nil {
		return func() {}, nil
	}
	ctx, cancel := context.WithDeadline(ctx, st.deadline)
	defer cancel()
	release, err = st.adm.cpu.acquire(ctx)
	if err == nil && ctx.Err() != nil { // a slot and the deadline may come at once
		release()
		err = ctx.Err()
	}
	switch {
	case err == nil:
		st.adm.privateOps.Add(1)
		return release, nil
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("handshake: timed out waiting for one of the %d private-key slots: the responder is short of CPU", st.adm.cpu.limit())
	}
	return nil, fmt.Errorf("handshake: waiting for a private-key slot: %w", err)
}

// takeSlot takes a slot of handshakes in progress, which Handshake gives
// back when it returns; without a free one it rejects with ALERT busy.
func (st *responder) takeSlot(signed bool, keyID [KeyIDLen]byte) error {
	if st.adm == nil {
		return nil
	}
	if !signed && st.adm.proven.has(st.remote, keyID, time.Now()) {
		signed = true // a source that completed a handshake with this key lately
	}
	sl, err := st.adm.slots.take(signed, keyID)
	if err != nil {
		return err
	}
	st.adm.slotsTaken.Add(1)
	st.slot = sl
	return nil
}

// Handshake runs the responder's side over conn, which it owns from now on:
// on failure conn is closed. It returns only after the initiator's FINISHED
// has verified, so the caller may act for the peer at once.
//
// A connection holds one of the bounded slots of handshakes in progress only
// from a hello that passed every check made without the private key (for
// version 2, its signature); before that it is bounded by HelloTimeout, so
// that silent or garbage connections cannot keep real initiators out. After
// HELLO_R, KEY_I must come within Config.KeyIDeadline.
//
// After a version 2 preface the first message may also be RESUME_I, a
// resumption of a session that Config.Sessions knows (PROTOCOL-v2.md
// section 6): Handshake then checks it without taking a slot, takes one
// counted as unverified until RESUME_F's MAC has verified (within
// Config.KeyIDeadline), and returns a Result whose Resumed names the
// session. The caller attaches Result.Conn to that session.
func (r *Responder) Handshake(ctx context.Context, conn net.Conn) (*Result, error) {
	start := time.Now()
	stop := guard(ctx, conn, r.cfg.timeout())
	st := &responder{cfg: &r.cfg, adm: r.adm, v1Only: r.v1Only, deadline: start.Add(r.cfg.timeout()), remote: conn.RemoteAddr()}
	defer func() {
		if st.slot != nil {
			st.slot.release()
		}
	}()
	fc, err := st.run(ctx, conn)
	if !stop() && err == nil {
		err = fmt.Errorf("handshake: %w", ctx.Err())
	}
	if err != nil {
		var rej *rejection
		if errors.As(err, &rej) {
			closeAfterAlert(conn, rej)
		}
		conn.Close()
		if st.peerKey != nil {
			err = fmt.Errorf("%w (initiator %s)", err, Fingerprint(st.peerKey))
		}
		return nil, err
	}
	if r.adm != nil {
		r.adm.proven.add(st.remote, KeyID(st.peerKey), time.Now())
	}
	res := &Result{
		Conn:            fc,
		PeerKey:         st.peerKey,
		PeerFingerprint: Fingerprint(st.peerKey),
		Suite:           SuiteAES256CFBHMACSHA256,
		Version:         int(st.version),
		Duration:        time.Since(start),
		Ticket:          st.ticket,
	}
	if st.resumed != nil {
		id := st.resumed.ID
		res.Resumed = &id
	}
	return res, nil
}

// responder is the responder's state, step by step.
type responder struct {
	cfg      *Config
	adm      *admission // nil: unbounded and uncounted (tests)
	slot     *slot      // once taken
	deadline time.Time  // of the whole handshake
	version  byte       // of the preface
	v1Only   bool       // Responder.v1Only
	peerKey  *rsa.PublicKey
	remote   net.Addr // the initiator's address, for admission.proven

	m1, m2                    []byte
	x25519Shared, mlkemShared []byte

	offered bool    // a version 2 HELLO_I offered resumption
	ticket  *Ticket // HELLO_R accepted it; Secret is filled from the schedule
	// A resumption (resume.go): the session's ticket, its MAC keys.
	resumed *Ticket
	rkeys   resumeKeys
}

func (st *responder) run(ctx context.Context, conn net.Conn) (*frame.Conn, error) {
	hello := time.Now().Add(HelloTimeout)
	if st.deadline.Before(hello) {
		hello = st.deadline
	}
	conn.SetReadDeadline(hello)
	var pre [prefaceLen]byte
	if _, err := io.ReadFull(conn, pre[:]); err != nil {
		return nil, ioError(ctx, "reading preface", err)
	}
	if string(pre[:len(prefaceMagic)]) != prefaceMagic {
		return nil, fmt.Errorf("%w: first bytes %q", ErrNotTunnel, wiretext.Printable(pre[:]))
	}
	switch st.version = pre[prefaceLen-1]; {
	case st.version == Version1 && st.cfg.MinVersion == Version2:
		return nil, reject(AlertUnsupportedVersion, "this exit requires protocol version 2",
			"initiator speaks protocol version 1; this responder requires version 2 (MinVersion): upgrade the entry")
	case st.v1Only && st.version != Version1:
		return nil, reject(AlertUnsupportedVersion, "this exit speaks protocol version 1",
			"initiator speaks protocol version %d; this responder speaks 1", st.version)
	case st.version != Version1 && st.version != Version2:
		return nil, reject(AlertUnsupportedVersion, "this exit speaks protocol versions 1 and 2",
			"initiator speaks protocol version %d; this responder speaks 1 and 2", st.version)
	}
	want := []byte{msgHelloI}
	if st.version == Version2 {
		want = append(want, msgResumeI)
	}
	typ, msg, err := readMsg(conn, want...)
	if err != nil {
		if errors.As(err, new(*unexpectedError)) {
			return nil, reject(AlertProtocolError, "expected HELLO_I", "%v", err)
		}
		if errors.Is(err, errMalformed) {
			return nil, reject(AlertProtocolError, "bad HELLO_I", "%v", err)
		}
		return nil, ioError(ctx, "reading HELLO_I", err)
	}
	st.m1 = append(slices.Clip(pre[:]), msg...)
	if typ == msgResumeI {
		return st.resume(ctx, conn)
	}
	m2, err := st.handleHelloI(ctx, msg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(m2); err != nil {
		return nil, ioError(ctx, "sending HELLO_R", err)
	}
	m3, err := st.readThird(ctx, conn, msgKeyI, "KEY_I")
	if err != nil {
		return nil, err
	}
	secret, err := st.handleKeyI(ctx, m3)
	if err != nil {
		return nil, err
	}
	conn.SetReadDeadline(st.deadline)
	sched, err := deriveSchedule(st.m1, st.m2, m3, secret, st.x25519Shared, st.mlkemShared)
	if err != nil {
		return nil, err
	}
	if st.ticket != nil {
		st.ticket.Secret = sched.resumptionSecret()
	}
	fc := frame.New(conn, sched.responderKeys(), st.cfg.frameConfig(st.ticket != nil))
	sched.wipeSecrets(secret, st.x25519Shared, st.mlkemShared)
	return responderFinish(ctx, fc)
}

// readThird waits for the initiator's third message, of type want (KEY_I,
// or RESUME_F), or an ALERT. It is one round trip and the initiator's work
// away: a silent peer does not keep its slot for the whole handshake
// timeout (Config.KeyIDeadline).
func (st *responder) readThird(ctx context.Context, conn net.Conn, want byte, name string) ([]byte, error) {
	by := time.Now().Add(st.cfg.keyIDeadline())
	if st.deadline.Before(by) {
		by = st.deadline
	}
	conn.SetReadDeadline(by)
	typ, m3, err := readMsg(conn, want, msgAlert)
	switch {
	case errors.As(err, new(*unexpectedError)), errors.Is(err, errMalformed):
		return nil, reject(AlertProtocolError, "expected "+name, "waiting for %s: %v", name, err)
	case err != nil:
		return nil, ioError(ctx, "waiting for "+name, err)
	case typ == msgAlert:
		return nil, alertFrom(m3)
	}
	return m3, nil
}

// responderFinish checks the initiator's FINISHED on fc, then sends its own.
func responderFinish(ctx context.Context, fc *frame.Conn) (*frame.Conn, error) {
	if err := fc.ReadFinished(); err != nil {
		return nil, fmt.Errorf("handshake: initiator's FINISHED: %w", err)
	}
	if err := fc.SendFinished(); err != nil {
		return nil, ioError(ctx, "sending FINISHED", err)
	}
	return fc, nil
}

// handleHelloI checks HELLO_I (msg, whose M1 is st.m1) of st.version and
// returns M2 = HELLO_R. Every check that needs no private key comes before
// the slot is taken (PROTOCOL-v2.md section 2.4).
func (st *responder) handleHelloI(ctx context.Context, msg []byte) ([]byte, error) {
	var hi *helloI
	var err error
	if st.version == Version2 {
		h2, err := st.checkHelloI2(msg)
		if err != nil {
			return nil, err
		}
		hi = &h2.helloI
	} else {
		if hi, err = st.checkHelloI1(msg); err != nil {
			return nil, err
		}
	}
	return st.helloR(ctx, hi)
}

// checkHelloI1 checks a version 1 HELLO_I (PROTOCOL.md section 2.3, and
// the fallback signal) and takes an unverified slot.
func (st *responder) checkHelloI1(msg []byte) (*helloI, error) {
	hi, err := parseHelloI(msg[msgHeaderLen:])
	if err != nil {
		return nil, reject(AlertProtocolError, "bad HELLO_I", "%v", err)
	}
	if slices.Contains(hi.suites, suiteFallback) && !st.v1Only {
		return nil, reject(AlertInappropriateFallback, "this exit speaks protocol version 2: the refusal of version 2 was forged",
			"initiator fell back to version 1 after a refusal of version 2 that this responder did not send: someone on the path between them forged ALERT unsupported_version")
	}
	if err := st.checkSuiteAndKey(hi); err != nil {
		return nil, err
	}
	return hi, st.takeSlot(false, hi.keyID)
}

// checkHelloI2 checks a version 2 HELLO_I, its signature last (the only
// check that costs more than a hash), and takes a slot.
func (st *responder) checkHelloI2(msg []byte) (*helloI2, error) {
	hi, err := parseHelloI2(msg[msgHeaderLen:])
	if err != nil {
		return nil, reject(AlertProtocolError, "bad HELLO_I", "%v", err)
	}
	if val, ok := findExtension(hi.ext, extResumption); ok {
		if len(val) != 0 {
			return nil, reject(AlertProtocolError, "bad HELLO_I", "HELLO_I offers resumption with a value of %d bytes; the offer is empty", len(val))
		}
		st.offered = true
	}
	if err := st.checkSuiteAndKey(&hi.helloI); err != nil {
		return nil, err
	}
	now := st.cfg.now()
	if skew := absDiff(hi.time, now.Unix()); skew > uint64(HelloSkew/time.Second) {
		return nil, reject(AlertStaleHello, fmt.Sprintf("hello time is %d s from this exit's clock, %s", skew, now.UTC().Format(time.RFC3339)),
			"initiator's clock (Unix %d) is %d s from this responder's (%s), more than %v: set both clocks right (NTP)",
			hi.time, skew, now.UTC().Format(time.RFC3339), HelloSkew)
	}
	rk := replayKey(hi.keyID, hi.random)
	if st.adm != nil && st.adm.replay.seenBefore(rk, now) {
		return nil, replayed()
	}
	// sig_h covers M1 up to sig_len: the preface, the header and the body
	// as received (st.m1 ends with sig_len and sig).
	if err := verify(st.peerKey, contextHello2, digest(st.m1[:len(st.m1)-2-len(hi.sig)]), hi.sig); err != nil {
		return nil, reject(AlertBadSignature, "bad hello signature",
			"hello signature does not verify under the initiator's authorized key %s", Fingerprint(st.peerKey))
	}
	if st.adm != nil {
		fresh, err := st.adm.replay.record(rk, hi.time, now)
		if err != nil {
			return nil, reject(AlertBusy, "too many handshakes; retry later", "%v", err)
		}
		if !fresh {
			return nil, replayed()
		}
	}
	return hi, st.takeSlot(true, hi.keyID)
}

func replayed() error {
	return rejectAs(AlertStaleHello, ErrReplayedHello, "hello already seen",
		"this HELLO_I (key id and random) was seen before: a replay of a captured hello")
}

// absDiff is |t - now|, in seconds, saturating.
func absDiff(t uint64, now int64) uint64 {
	n := uint64(max(now, 0))
	if t > n {
		return t - n
	}
	return n - t
}

// checkSuiteAndKey checks for a common suite (ALERT no_common_suite) and an
// authorized key id (ALERT unknown_key), and sets st.peerKey.
func (st *responder) checkSuiteAndKey(hi *helloI) error {
	if !slices.Contains(hi.suites, SuiteAES256CFBHMACSHA256) {
		return reject(AlertNoCommonSuite, "no common suite; this exit supports suite 0x01",
			"initiator offered suites %x; this responder supports only 0x01", hi.suites)
	}
	fp := FingerprintID(hi.keyID)
	pub, ok := st.cfg.Authorized.Lookup(hi.keyID)
	if !ok {
		return reject(AlertUnknownKey, fmt.Sprintf("key %s is not authorized", fp),
			"initiator key %s is not authorized: add its public key to the authorized keys to admit it", fp)
	}
	st.peerKey = pub
	return nil
}

// helloR makes the key shares for hi and returns M2 = HELLO_R, signed.
func (st *responder) helloR(ctx context.Context, hi *helloI) ([]byte, error) {
	peer, err := ecdh.X25519().NewPublicKey(hi.x25519)
	if err != nil {
		return nil, reject(AlertProtocolError, "bad X25519 share", "initiator X25519 share: %v", err)
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, reject(AlertInternalError, "internal error", "X25519 key: %v", err)
	}
	if st.x25519Shared, err = priv.ECDH(peer); err != nil { // rejects an all-zero result
		return nil, reject(AlertProtocolError, "bad X25519 share", "initiator X25519 share: %v", err)
	}
	ek, err := mlkem.NewEncapsulationKey768(hi.mlkemEK)
	if err != nil {
		return nil, reject(AlertProtocolError, "bad ML-KEM key", "initiator ML-KEM encapsulation key: %v", err)
	}
	var ct []byte
	st.mlkemShared, ct = ek.Encapsulate()

	hr := helloR{
		suite:   SuiteAES256CFBHMACSHA256,
		random:  make([]byte, randomLen),
		x25519:  priv.PublicKey().Bytes(),
		mlkemCT: ct,
		keyID:   KeyID(&st.cfg.PrivateKey.PublicKey),
	}
	rand.Read(hr.random)
	hr2 := &helloR2{helloR: hr}
	if st.version == Version2 && st.offered && st.cfg.ResumeWindow > 0 {
		a := &resumptionAccept{window: st.cfg.resumeWindowSeconds()}
		rand.Read(a.id[:])
		hr2.ext = appendExtensions(nil, extension{typ: extResumption, val: a.value()})
		st.ticket = &Ticket{ID: a.id, PeerKeyID: hi.keyID, Window: time.Duration(a.window) * time.Second}
	}
	sigContext, signed := contextResponder, hr.signedBody()
	if st.version == Version2 {
		sigContext, signed = contextResponder2, hr2.signedBody()
	}
	release, err := st.rsaSlot(ctx)
	if err != nil {
		return nil, err
	}
	sig, err := sign(st.cfg.PrivateKey, sigContext, digest(st.m1, signed))
	release()
	if err != nil {
		return nil, reject(AlertInternalError, "internal error", "signing HELLO_R: %v", err)
	}
	if st.version == Version2 {
		hr2.sig = sig
		st.m2 = appendMsg(nil, msgHelloR, hr2.body())
	} else {
		hr.sig = sig
		st.m2 = appendMsg(nil, msgHelloR, hr.body())
	}
	return st.m2, nil
}

// handleKeyI verifies sig_i before it decrypts, and returns the secret.
func (st *responder) handleKeyI(ctx context.Context, m3 []byte) ([]byte, error) {
	ki, err := parseKeyI(m3[msgHeaderLen:])
	if err != nil {
		return nil, reject(AlertProtocolError, "bad KEY_I", "%v", err)
	}
	sigContext := contextInitiator
	if st.version == Version2 {
		sigContext = contextInitiator2
	}
	if err := verify(st.peerKey, sigContext, digest(st.m1, st.m2, ki.signedBody()), ki.sig); err != nil {
		return nil, reject(AlertBadSignature, "bad initiator signature",
			"initiator signature does not verify under its authorized key %s", Fingerprint(st.peerKey))
	}
	if st.slot != nil {
		st.slot.verified() // the initiator has proven its key: no longer counted as unverified
	}
	release, err := st.rsaSlot(ctx)
	if err != nil {
		return nil, err
	}
	secret, err := rsa.DecryptOAEP(sha256.New(), nil, st.cfg.PrivateKey, ki.ct, []byte(labelOAEP))
	release()
	if err != nil || len(secret) != 32 {
		// One code and one message for every failure: no oracle.
		return nil, reject(AlertDecryptError, "decrypt error", "key transport does not decrypt")
	}
	return secret, nil
}
