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
	"runtime"
	"slices"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake/wiretext"
)

// DefaultMaxInProgress bounds concurrent responder handshakes when
// NewResponder is given zero.
const DefaultMaxInProgress = 64

// Responder answers handshakes. It bounds how many run at once: past the
// bound, a new initiator is answered ALERT busy and closed. It is safe for
// concurrent use.
type Responder struct {
	cfg   Config
	slots chan struct{} // handshakes in progress
	rsa   chan struct{} // private-key operations in progress: all CPUs but one, so sessions keep a core
}

// NewResponder checks cfg and returns a Responder allowing maxInProgress
// concurrent handshakes (zero means DefaultMaxInProgress).
func NewResponder(cfg Config, maxInProgress int) (*Responder, error) {
	if err := cfg.checkResponder(); err != nil {
		return nil, err
	}
	if maxInProgress <= 0 {
		maxInProgress = DefaultMaxInProgress
	}
	return &Responder{
		cfg:   cfg,
		slots: make(chan struct{}, maxInProgress),
		rsa:   make(chan struct{}, max(1, runtime.GOMAXPROCS(0)-1)),
	}, nil
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
// private-key work.
func (st *responder) rsaSlot(ctx context.Context) (release func(), err error) {
	if st.rsaSlots == nil {
		return func() {}, nil
	}
	ctx, cancel := context.WithDeadline(ctx, st.deadline)
	defer cancel()
	select {
	case st.rsaSlots <- struct{}{}:
		if ctx.Err() == nil { // a slot and the deadline may come at once
			return func() { <-st.rsaSlots }, nil
		}
		<-st.rsaSlots
	case <-ctx.Done():
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("handshake: timed out waiting for one of the %d private-key slots: the responder is short of CPU", cap(st.rsaSlots))
	}
	return nil, fmt.Errorf("handshake: waiting for a private-key slot: %w", ctx.Err())
}

// takeSlot takes a slot of handshakes in progress, which Handshake gives
// back when it returns; without a free one it rejects with ALERT busy.
func (st *responder) takeSlot() error {
	select {
	case st.slots <- struct{}{}:
		st.release = func() { <-st.slots }
		return nil
	default:
		return reject(AlertBusy, "too many handshakes in progress; retry later",
			"%d handshakes already in progress", cap(st.slots))
	}
}

// Handshake runs the responder's side over conn, which it owns from now on:
// on failure conn is closed. It returns only after the initiator's FINISHED
// has verified, so the caller may act for the peer at once.
//
// A connection holds one of the bounded slots of handshakes in progress only
// from a well-formed HELLO_I that names an authorized key on; before that it
// is bounded by HelloTimeout, so that silent or garbage connections cannot
// keep real initiators out.
func (r *Responder) Handshake(ctx context.Context, conn net.Conn) (*Result, error) {
	start := time.Now()
	stop := guard(ctx, conn, r.cfg.timeout())
	st := &responder{cfg: &r.cfg, slots: r.slots, rsaSlots: r.rsa, deadline: start.Add(r.cfg.timeout())}
	defer func() {
		if st.release != nil {
			st.release()
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
	return &Result{
		Conn:            fc,
		PeerKey:         st.peerKey,
		PeerFingerprint: Fingerprint(st.peerKey),
		Suite:           SuiteAES256CFBHMACSHA256,
		Duration:        time.Since(start),
	}, nil
}

// responder is the responder's state, step by step.
type responder struct {
	cfg      *Config
	slots    chan struct{} // handshakes in progress (Responder.slots)
	release  func()        // gives back the slot in slots, once taken
	rsaSlots chan struct{} // nil: unbounded (tests)
	deadline time.Time     // of the whole handshake
	peerKey  *rsa.PublicKey

	m1, m2                    []byte
	x25519Shared, mlkemShared []byte
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
	if pre[prefaceLen-1] != ProtocolVersion {
		return nil, reject(AlertUnsupportedVersion, fmt.Sprintf("this exit speaks protocol version %d", ProtocolVersion),
			"initiator speaks protocol version %d; this responder speaks %d", pre[prefaceLen-1], ProtocolVersion)
	}
	m2, err := st.handleHelloI(ctx, pre[:], conn)
	if err != nil {
		return nil, err
	}
	conn.SetReadDeadline(st.deadline)
	if _, err := conn.Write(m2); err != nil {
		return nil, ioError(ctx, "sending HELLO_R", err)
	}
	typ, m3, err := readMsg(conn, msgKeyI, msgAlert)
	switch {
	case errors.As(err, new(*unexpectedError)), errors.Is(err, errMalformed):
		return nil, reject(AlertProtocolError, "expected KEY_I", "waiting for KEY_I: %v", err)
	case err != nil:
		return nil, ioError(ctx, "waiting for KEY_I", err)
	case typ == msgAlert:
		return nil, alertFrom(m3)
	}
	secret, err := st.handleKeyI(ctx, m3)
	if err != nil {
		return nil, err
	}
	sched, err := deriveSchedule(st.m1, st.m2, m3, secret, st.x25519Shared, st.mlkemShared)
	if err != nil {
		return nil, err
	}
	fc := frame.New(conn, sched.responderKeys(), st.cfg.Frame)
	sched.wipeSecrets(secret, st.x25519Shared, st.mlkemShared)
	if err := fc.ReadFinished(); err != nil {
		return nil, fmt.Errorf("handshake: initiator's FINISHED: %w", err)
	}
	if err := fc.SendFinished(); err != nil {
		return nil, ioError(ctx, "sending FINISHED", err)
	}
	return fc, nil
}

// handleHelloI reads and checks HELLO_I (suite, then key id, then the key
// shares) and returns M2 = HELLO_R.
func (st *responder) handleHelloI(ctx context.Context, pre []byte, conn net.Conn) ([]byte, error) {
	_, msg, err := readMsg(conn, msgHelloI)
	if err != nil {
		if errors.As(err, new(*unexpectedError)) {
			return nil, reject(AlertProtocolError, "expected HELLO_I", "%v", err)
		}
		if errors.Is(err, errMalformed) {
			return nil, reject(AlertProtocolError, "bad HELLO_I", "%v", err)
		}
		return nil, ioError(ctx, "reading HELLO_I", err)
	}
	st.m1 = append(slices.Clip(pre), msg...)
	hi, err := parseHelloI(msg[msgHeaderLen:])
	if err != nil {
		return nil, reject(AlertProtocolError, "bad HELLO_I", "%v", err)
	}
	if !slices.Contains(hi.suites, SuiteAES256CFBHMACSHA256) {
		return nil, reject(AlertNoCommonSuite, "no common suite; this exit supports suite 0x01",
			"initiator offered suites %x; this responder supports only 0x01", hi.suites)
	}
	fp := FingerprintID(hi.keyID)
	pub, ok := st.cfg.Authorized.Lookup(hi.keyID)
	if !ok {
		return nil, reject(AlertUnknownKey, fmt.Sprintf("key %s is not authorized", fp),
			"initiator key %s is not authorized: add its public key to the authorized keys to admit it", fp)
	}
	st.peerKey = pub
	if err := st.takeSlot(); err != nil {
		return nil, err
	}

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

	hr := &helloR{
		suite:   SuiteAES256CFBHMACSHA256,
		random:  make([]byte, randomLen),
		x25519:  priv.PublicKey().Bytes(),
		mlkemCT: ct,
		keyID:   KeyID(&st.cfg.PrivateKey.PublicKey),
	}
	rand.Read(hr.random)
	release, err := st.rsaSlot(ctx)
	if err != nil {
		return nil, err
	}
	hr.sig, err = sign(st.cfg.PrivateKey, contextResponder, digest(st.m1, hr.signedBody()))
	release()
	if err != nil {
		return nil, reject(AlertInternalError, "internal error", "signing HELLO_R: %v", err)
	}
	st.m2 = appendMsg(nil, msgHelloR, hr.body())
	return st.m2, nil
}

// handleKeyI verifies sig_i before it decrypts, and returns the secret.
func (st *responder) handleKeyI(ctx context.Context, m3 []byte) ([]byte, error) {
	ki, err := parseKeyI(m3[msgHeaderLen:])
	if err != nil {
		return nil, reject(AlertProtocolError, "bad KEY_I", "%v", err)
	}
	if err := verify(st.peerKey, contextInitiator, digest(st.m1, st.m2, ki.signedBody()), ki.sig); err != nil {
		return nil, reject(AlertBadSignature, "bad initiator signature",
			"initiator signature does not verify under its authorized key %s", Fingerprint(st.peerKey))
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
