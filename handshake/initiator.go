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
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

// Initiate runs the initiator's side of the handshake over conn, which it
// owns from now on: on failure conn is closed. It sends KEY_I and FINISHED
// back to back, then waits for the responder's FINISHED, so that a
// successful return means the keys are confirmed and a late rejection
// (ALERT bad_signature or decrypt_error) is reported here. ctx and
// cfg.Timeout bound the handshake.
func Initiate(ctx context.Context, conn net.Conn, cfg *Config) (*Result, error) {
	if err := cfg.checkInitiator(); err != nil {
		conn.Close()
		return nil, err
	}
	start := time.Now()
	st, err := newInitiator(cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	stop := guard(ctx, conn, cfg.timeout())
	fc, err := st.run(ctx, conn)
	if !stop() && err == nil {
		err = fmt.Errorf("handshake: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &Result{
		Conn:            fc,
		PeerKey:         st.peerKey,
		PeerFingerprint: Fingerprint(st.peerKey),
		Suite:           SuiteAES256CFBHMACSHA256,
		Version:         int(st.version),
		Duration:        time.Since(start),
		Ticket:          st.ticket,
	}, nil
}

// initiator is the initiator's state, step by step.
type initiator struct {
	cfg     *Config
	version byte // spoken: cfg.version()
	random  []byte
	x25519  *ecdh.PrivateKey
	mlkem   *mlkem.DecapsulationKey768
	// peerKey is the pinned key HELLO_R named (Config.PeerKey, or one of
	// Config.PeerKeys).
	peerKey *rsa.PublicKey

	m1, m2                    []byte
	x25519Shared, mlkemShared []byte

	offered bool    // HELLO_I offered resumption
	ticket  *Ticket // HELLO_R accepted it; Secret is filled from the schedule
}

func newInitiator(cfg *Config) (*initiator, error) {
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, err
	}
	random := make([]byte, randomLen)
	rand.Read(random)
	return &initiator{cfg: cfg, version: cfg.version(), random: random, x25519: x, mlkem: dk}, nil
}

func (st *initiator) run(ctx context.Context, conn net.Conn) (*frame.Conn, error) {
	m1, err := st.hello()
	if err != nil {
		return nil, fmt.Errorf("handshake: signing HELLO_I: %w", err)
	}
	if _, err := conn.Write(m1); err != nil {
		return nil, ioError(ctx, "sending HELLO_I", err)
	}
	typ, msg, err := readMsg(conn, msgHelloR, msgAlert)
	var ue *unexpectedError
	switch {
	case errors.As(err, &ue):
		return nil, fmt.Errorf("%w: %v", ErrNotTunnel, ue)
	case errors.Is(err, errMalformed):
		return nil, st.fail(conn, reject(AlertProtocolError, "bad HELLO_R", "%v", err))
	case err != nil:
		return nil, ioError(ctx, "waiting for HELLO_R (is the peer a tunnel exit?)", err)
	case typ == msgAlert:
		return nil, alertFrom(msg)
	}
	if err := st.handleHelloR(msg); err != nil {
		return nil, st.fail(conn, err)
	}
	m3, secret, err := st.keyI()
	if err != nil {
		return nil, st.fail(conn, reject(AlertInternalError, "internal error", "building KEY_I: %v", err))
	}
	if _, err := conn.Write(m3); err != nil {
		return nil, ioError(ctx, "sending KEY_I", err)
	}
	sched, err := deriveSchedule(st.m1, st.m2, m3, secret, st.x25519Shared, st.mlkemShared)
	if err != nil {
		return nil, err
	}
	if st.ticket != nil {
		st.ticket.Secret = sched.resumptionSecret()
	}
	fc := frame.New(&alertConn{Conn: conn}, sched.initiatorKeys(), st.cfg.frameConfig(st.ticket != nil))
	sched.wipeSecrets(secret, st.x25519Shared, st.mlkemShared)
	return initiatorFinish(ctx, fc)
}

// initiatorFinish sends this side's FINISHED on fc, then checks the
// responder's (or the ALERT it sent instead).
func initiatorFinish(ctx context.Context, fc *frame.Conn) (*frame.Conn, error) {
	if err := fc.SendFinished(); err != nil {
		return nil, ioError(ctx, "sending FINISHED", err)
	}
	if err := fc.ReadFinished(); err != nil {
		var ae *AlertError
		if errors.As(err, &ae) {
			return nil, err
		}
		return nil, ioError(ctx, "waiting for the responder's FINISHED", err)
	}
	return fc, nil
}

// alertConn is the initiator's transport under the record layer. The
// responder answers KEY_I with an ALERT when it rejects it, but by then the
// initiator reads records. A record starts with its length, whose first
// byte is 0x00; an ALERT starts with 0x15: the first byte tells them apart.
type alertConn struct {
	net.Conn
	checked bool // the first byte has been seen; Read is not concurrent (frame holds its read lock)
}

func (c *alertConn) Read(p []byte) (int, error) {
	if c.checked || len(p) == 0 {
		return c.Conn.Read(p)
	}
	if _, err := io.ReadFull(c.Conn, p[:1]); err != nil {
		return 0, err
	}
	c.checked = true
	if p[0] != msgAlert {
		return 1, nil
	}
	var hdr [msgHeaderLen - 1]byte
	if _, err := io.ReadFull(c.Conn, hdr[:]); err != nil {
		return 0, fmt.Errorf("%w: truncated ALERT", ErrProtocol)
	}
	n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if n > 2+255 {
		return 0, fmt.Errorf("%w: ALERT of %d bytes", ErrProtocol, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.Conn, body); err != nil {
		return 0, fmt.Errorf("%w: truncated ALERT", ErrProtocol)
	}
	return 0, alertFrom(append([]byte{msgAlert, hdr[0], hdr[1], hdr[2]}, body...))
}

// CloseWrite half-closes the transport, for frame.Conn.CloseWrite.
func (c *alertConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// fail sends the ALERT of a rejection and returns its error.
func (st *initiator) fail(conn net.Conn, err error) error {
	var r *rejection
	if errors.As(err, &r) {
		sendAlert(conn, r)
	}
	return err
}

// alertFrom turns a received ALERT message into an error.
func alertFrom(msg []byte) error {
	a, err := parseAlert(msg[msgHeaderLen:])
	if err != nil {
		return fmt.Errorf("%w: peer sent a %v", ErrProtocol, err)
	}
	return &AlertError{Code: a.code, Reason: a.reason}
}

// hello returns M1 = preface || HELLO_I of st.version; version 2 signs it.
func (st *initiator) hello() ([]byte, error) {
	m := helloI{
		suites:  []byte{SuiteAES256CFBHMACSHA256},
		random:  st.random,
		x25519:  st.x25519.PublicKey().Bytes(),
		mlkemEK: st.mlkem.EncapsulationKey().Bytes(),
		keyID:   KeyID(&st.cfg.PrivateKey.PublicKey),
	}
	if st.version != Version2 {
		if st.cfg.Fallback {
			m.suites = append(m.suites, suiteFallback)
		}
		st.m1 = appendMsg(preface[:], msgHelloI, m.body())
		return st.m1, nil
	}
	h2 := &helloI2{helloI: m, time: uint64(max(st.cfg.now().Unix(), 0))}
	if st.cfg.ResumeWindow > 0 {
		st.offered = true
		h2.ext = appendExtensions(nil, extension{typ: extResumption})
	}
	sig, err := sign(st.cfg.PrivateKey, contextHello2, digest(h2.signedMsg(prefaceV2[:], st.cfg.PrivateKey.Size())))
	if err != nil {
		return nil, err
	}
	h2.sig = sig
	st.m1 = appendMsg(prefaceV2[:], msgHelloI, h2.body())
	return st.m1, nil
}

// handleHelloR checks M2 in the order of section 2.3: pinned key id,
// signature, X25519 share, ML-KEM ciphertext.
func (st *initiator) handleHelloR(m2 []byte) error {
	var hr *helloR
	var accept *resumptionAccept
	sigContext, signed := contextResponder, []byte(nil)
	if st.version == Version2 {
		h2, err := parseHelloR2(m2[msgHeaderLen:])
		if err != nil {
			return reject(AlertProtocolError, "bad HELLO_R", "%v", err)
		}
		if accept, err = st.checkResumptionAccept(h2.ext); err != nil {
			return err
		}
		hr, sigContext, signed = &h2.helloR, contextResponder2, h2.signedBody()
	} else {
		var err error
		if hr, err = parseHelloR(m2[msgHeaderLen:]); err != nil {
			return reject(AlertProtocolError, "bad HELLO_R", "%v", err)
		}
		signed = hr.signedBody()
	}
	if hr.suite != SuiteAES256CFBHMACSHA256 {
		return reject(AlertNoCommonSuite, "suite not offered", "responder chose suite %#02x, which was not offered", hr.suite)
	}
	if set := st.cfg.PeerKeys; set != nil && set.Len() > 0 {
		k, ok := set.Lookup(hr.keyID)
		if !ok {
			return reject(AlertUnknownKey, "responder key is not a pinned key",
				"the exit presented key %s, which is none of the pinned keys (%s); check which public keys the entry is given for this exit",
				FingerprintID(hr.keyID), strings.Join(set.Fingerprints(), ", "))
		}
		st.peerKey = k
	} else {
		if want := KeyID(st.cfg.PeerKey); hr.keyID != want {
			return reject(AlertUnknownKey, "responder key is not the pinned key",
				"the exit presented key %s, but the pinned key is %s; check which public key the entry is given for this exit",
				FingerprintID(hr.keyID), FingerprintID(want))
		}
		st.peerKey = st.cfg.PeerKey
	}
	if err := verify(st.peerKey, sigContext, digest(st.m1, signed), hr.sig); err != nil {
		return reject(AlertBadSignature, "bad responder signature",
			"responder signature does not verify under the pinned key %s", Fingerprint(st.peerKey))
	}
	peer, err := ecdh.X25519().NewPublicKey(hr.x25519)
	if err != nil {
		return reject(AlertProtocolError, "bad X25519 share", "responder X25519 share: %v", err)
	}
	if st.x25519Shared, err = st.x25519.ECDH(peer); err != nil { // rejects an all-zero result
		return reject(AlertProtocolError, "bad X25519 share", "responder X25519 share: %v", err)
	}
	if st.mlkemShared, err = st.mlkem.Decapsulate(hr.mlkemCT); err != nil {
		return reject(AlertProtocolError, "bad ML-KEM ciphertext", "responder ML-KEM ciphertext: %v", err)
	}
	st.m2 = m2
	if accept != nil {
		st.ticket = &Ticket{ID: accept.id, PeerKeyID: hr.keyID, Window: time.Duration(accept.window) * time.Second}
	}
	return nil
}

// checkResumptionAccept reads HELLO_R's resumption extension, if any: it
// may come only in answer to an offer, and must be well formed (ALERT
// protocol_error otherwise).
func (st *initiator) checkResumptionAccept(ext []byte) (*resumptionAccept, error) {
	val, ok := findExtension(ext, extResumption)
	if !ok {
		return nil, nil
	}
	if !st.offered {
		return nil, reject(AlertProtocolError, "resumption accepted but not offered",
			"HELLO_R accepts session resumption, which HELLO_I did not offer")
	}
	a, err := parseResumptionAccept(val)
	if err != nil {
		return nil, reject(AlertProtocolError, "bad resumption extension", "HELLO_R: %v", err)
	}
	return a, nil
}

// keyI returns M3 = KEY_I and the secret it transports.
func (st *initiator) keyI() (m3, secret []byte, err error) {
	secret = make([]byte, 32)
	rand.Read(secret)
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, st.peerKey, secret, []byte(labelOAEP))
	if err != nil {
		return nil, nil, err
	}
	ki := &keyI{ct: ct}
	sigContext := contextInitiator
	if st.version == Version2 {
		sigContext = contextInitiator2
	}
	if ki.sig, err = sign(st.cfg.PrivateKey, sigContext, digest(st.m1, st.m2, ki.signedBody())); err != nil {
		return nil, nil, err
	}
	return appendMsg(nil, msgKeyI, ki.body()), secret, nil
}
