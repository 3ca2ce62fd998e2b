package handshake

// Session resumption (PROTOCOL-v2.md section 6): a session whose full
// handshake negotiated it continues on a new TCP connection with three
// messages and no RSA. Both sides hold rs, the ticket's secret; MACs under
// keys from rs over fresh randoms of both sides prove possession, and a
// fresh X25519 exchange gives the new connection's keys forward secrecy.
//
//	initiator                               responder
//	preface || RESUME_I ------------------>  parse; session resumable?
//	  session_id, key_id_i, random_i,         key_id_i the session's and
//	  x25519_i, mac_i (k_i)                   still authorized? mac_i?
//	                                          then a slot, an X25519 share
//	                    <------------------  RESUME_R
//	mac_r? X25519                             random_r, x25519_r, mac_r (k_r)
//	RESUME_F (mac_f, k_f), FINISHED ------>  mac_f? FINISHED?
//	                    <------------------  FINISHED

import (
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

// Resume continues the session of t, a ticket from a full handshake's
// Result, over conn, which it owns from now on: on failure conn is closed.
// cfg is the initiator's configuration: its PrivateKey names the key the
// session was made with, ResumeWindow must be positive, and the responder
// key t names must still be pinned (PeerKey or PeerKeys), else Resume
// fails at once with an error matching ErrUnknownKey, sending nothing.
//
// It sends RESUME_F and FINISHED back to back and waits for the
// responder's FINISHED, as Initiate does. An error matching
// ErrUnknownSession (ALERT unknown_session) means the responder cannot
// resume this session: make a full handshake. The returned Conn carries
// ACK records; its first record after FINISHED each way is an ACK, which
// the caller sends (PROTOCOL-v2.md section 6.2).
func Resume(ctx context.Context, conn net.Conn, cfg *Config, t Ticket) (*Result, error) {
	st, err := newResumer(cfg, t)
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer st.keys.wipe()
	start := time.Now()
	stop := guard(ctx, conn, cfg.timeout())
	fc, err := st.run(ctx, conn)
	if !stop() && err == nil {
		err = fmt.Errorf("handshake: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w (resuming session %x)", err, t.ID)
	}
	id := t.ID
	return &Result{
		Conn:            fc,
		PeerKey:         st.peerKey,
		PeerFingerprint: Fingerprint(st.peerKey),
		Suite:           SuiteAES256CFBHMACSHA256,
		Version:         Version2,
		Duration:        time.Since(start),
		Resumed:         &id,
	}, nil
}

// resumer is the initiator's state in a resumption.
type resumer struct {
	cfg     *Config
	t       Ticket
	keys    resumeKeys
	peerKey *rsa.PublicKey // the pinned key t names
	random  [randomLen]byte
	x25519  *ecdh.PrivateKey

	m1, m2       []byte
	x25519Shared []byte
}

func newResumer(cfg *Config, t Ticket) (*resumer, error) {
	if err := cfg.checkInitiator(); err != nil {
		return nil, err
	}
	if cfg.ResumeWindow <= 0 {
		return nil, errors.New("handshake: Resume with Config.ResumeWindow 0: resumption is off")
	}
	peer, ok := cfg.pinned(t.PeerKeyID)
	if !ok {
		return nil, fmt.Errorf("%w: session %x was made with the exit key %s, which is no longer pinned: not resuming it",
			ErrUnknownKey, t.ID, FingerprintID(t.PeerKeyID))
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	st := &resumer{cfg: cfg, t: t, keys: deriveResumeKeys(t.Secret), peerKey: peer, x25519: x}
	rand.Read(st.random[:])
	return st, nil
}

// pinned returns the pinned responder key with the given id.
func (c *Config) pinned(id [KeyIDLen]byte) (*rsa.PublicKey, bool) {
	if c.PeerKeys != nil && c.PeerKeys.Len() > 0 {
		return c.PeerKeys.Lookup(id)
	}
	if c.PeerKey != nil && KeyID(c.PeerKey) == id {
		return c.PeerKey, true
	}
	return nil, false
}

func (st *resumer) run(ctx context.Context, conn net.Conn) (*frame.Conn, error) {
	if _, err := conn.Write(st.resumeI()); err != nil {
		return nil, ioError(ctx, "sending RESUME_I", err)
	}
	typ, msg, err := readMsg(conn, msgResumeR, msgAlert)
	var ue *unexpectedError
	switch {
	case errors.As(err, &ue):
		return nil, fmt.Errorf("%w: %v", ErrNotTunnel, ue)
	case errors.Is(err, errMalformed):
		return nil, failWith(conn, reject(AlertProtocolError, "bad RESUME_R", "%v", err))
	case err != nil:
		return nil, ioError(ctx, "waiting for RESUME_R", err)
	case typ == msgAlert:
		return nil, alertFrom(msg)
	}
	if err := st.handleResumeR(msg); err != nil {
		return nil, failWith(conn, err)
	}
	m3 := st.resumeF()
	if _, err := conn.Write(m3); err != nil {
		return nil, ioError(ctx, "sending RESUME_F", err)
	}
	sched, err := deriveResumeSchedule(st.m1, st.m2, m3, st.t.Secret, st.x25519Shared)
	if err != nil {
		return nil, err
	}
	fc := frame.New(&alertConn{Conn: conn}, sched.initiatorKeys(), st.cfg.frameConfig(true))
	sched.wipeSecrets(nil, st.x25519Shared, nil)
	return initiatorFinish(ctx, fc)
}

// failWith sends the ALERT of a rejection and returns its error.
func failWith(conn net.Conn, err error) error {
	var r *rejection
	if errors.As(err, &r) {
		sendAlert(conn, r)
	}
	return err
}

// resumeI returns M1 = preface || RESUME_I.
func (st *resumer) resumeI() []byte {
	m := &resumeI{sessionID: st.t.ID, keyID: KeyID(&st.cfg.PrivateKey.PublicKey), random: st.random}
	copy(m.x25519[:], st.x25519.PublicKey().Bytes())
	m.mac = resumeMAC(st.keys.i, m.signedMsg(prefaceV2[:]))
	st.m1 = m.msg(prefaceV2[:])
	return st.m1
}

// handleResumeR checks M2 = RESUME_R: parsing, mac_r (the responder holds
// rs), then the X25519 share.
func (st *resumer) handleResumeR(m2 []byte) error {
	rr, err := parseResumeR(m2[msgHeaderLen:])
	if err != nil {
		return reject(AlertProtocolError, "bad RESUME_R", "%v", err)
	}
	want := resumeMAC(st.keys.r, st.m1, m2[:len(m2)-macLen])
	if !hmac.Equal(want[:], rr.mac[:]) {
		return reject(AlertBadSignature, "bad resumption MAC",
			"RESUME_R's MAC does not verify: the responder does not hold the session's secret")
	}
	peer, err := ecdh.X25519().NewPublicKey(rr.x25519[:])
	if err != nil {
		return reject(AlertProtocolError, "bad X25519 share", "responder X25519 share: %v", err)
	}
	if st.x25519Shared, err = st.x25519.ECDH(peer); err != nil { // rejects an all-zero result
		return reject(AlertProtocolError, "bad X25519 share", "responder X25519 share: %v", err)
	}
	st.m2 = m2
	return nil
}

// resumeF returns M3 = RESUME_F.
func (st *resumer) resumeF() []byte {
	m := &resumeF{mac: resumeMAC(st.keys.f, st.m1, st.m2)}
	return m.msg()
}

// resume runs the responder's side of a resumption; st.m1 is the preface
// and RESUME_I as received. Every check of RESUME_I comes before the slot
// and the X25519 operation (PROTOCOL-v2.md section 6.4).
func (st *responder) resume(ctx context.Context, conn net.Conn) (*frame.Conn, error) {
	defer st.rkeys.wipe()
	ri, err := st.checkResumeI(st.m1)
	if err != nil {
		return nil, err
	}
	defer clear(st.resumed.Secret[:])
	// Counted as an unverified hello until RESUME_F: a RESUME_I can be
	// replayed by anyone who saw it, so until mac_f it proves nothing.
	if err := st.takeSlot(false, ri.keyID); err != nil {
		return nil, err
	}
	m2, err := st.resumeR(ri)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(m2); err != nil {
		return nil, ioError(ctx, "sending RESUME_R", err)
	}
	m3, err := st.readThird(ctx, conn, msgResumeF, "RESUME_F")
	if err != nil {
		return nil, err
	}
	if err := st.checkResumeF(m3); err != nil {
		return nil, err
	}
	if st.slot != nil {
		st.slot.verified()
	}
	conn.SetReadDeadline(st.deadline)
	sched, err := deriveResumeSchedule(st.m1, st.m2, m3, st.resumed.Secret, st.x25519Shared)
	if err != nil {
		return nil, err
	}
	fc := frame.New(conn, sched.responderKeys(), st.cfg.frameConfig(true))
	sched.wipeSecrets(nil, st.x25519Shared, nil)
	return responderFinish(ctx, fc)
}

// checkResumeI makes the checks of RESUME_I (m1 = preface || RESUME_I), in
// the order of section 6.4, each costing a lookup or a hash at most: parse,
// session resumable, key id the session's and still authorized, mac_i.
// It sets st.resumed, st.peerKey and st.rkeys.
func (st *responder) checkResumeI(m1 []byte) (*resumeI, error) {
	ri, err := parseResumeI(m1[prefaceLen+msgHeaderLen:])
	if err != nil {
		return nil, reject(AlertProtocolError, "bad RESUME_I", "%v", err)
	}
	if st.cfg.Sessions == nil || st.cfg.ResumeWindow <= 0 {
		return nil, reject(AlertUnknownSession, "unknown or expired session",
			"resumption of session %x refused: session resumption is off on this responder", ri.sessionID)
	}
	t, ok := st.cfg.Sessions.Resumable(ri.sessionID)
	if !ok {
		return nil, reject(AlertUnknownSession, "unknown or expired session",
			"no resumable session %x: unknown, ended, or its window has passed", ri.sessionID)
	}
	defer clear(t.Secret[:])
	fp := FingerprintID(ri.keyID)
	if ri.keyID != t.PeerKeyID {
		return nil, reject(AlertUnknownKey, fmt.Sprintf("key %s is not the session's", fp),
			"resumption of session %x presents key %s, but the session was made with %s", ri.sessionID, fp, FingerprintID(t.PeerKeyID))
	}
	pub, ok := st.cfg.Authorized.Lookup(ri.keyID)
	if !ok {
		return nil, reject(AlertUnknownKey, fmt.Sprintf("key %s is not authorized", fp),
			"resumption of session %x: its initiator key %s is no longer authorized", ri.sessionID, fp)
	}
	st.peerKey = pub
	ki := expand32(t.Secret[:], labelResumeI)
	want := resumeMAC(ki, m1[:len(m1)-macLen])
	clear(ki[:])
	if !hmac.Equal(want[:], ri.mac[:]) {
		return nil, reject(AlertBadSignature, "bad resumption MAC",
			"RESUME_I's MAC does not verify under session %x's secret", ri.sessionID)
	}
	kept := t // t.Secret is wiped on return; kept's copy when resume ends
	st.resumed = &kept
	st.rkeys = deriveResumeKeys(t.Secret)
	return ri, nil
}

// resumeR makes the responder's X25519 share and returns M2 = RESUME_R.
func (st *responder) resumeR(ri *resumeI) ([]byte, error) {
	peer, err := ecdh.X25519().NewPublicKey(ri.x25519[:])
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
	rr := &resumeR{}
	rand.Read(rr.random[:])
	copy(rr.x25519[:], priv.PublicKey().Bytes())
	rr.mac = resumeMAC(st.rkeys.r, st.m1, rr.signedMsg())
	st.m2 = rr.msg()
	return st.m2, nil
}

// checkResumeF verifies mac_f: only the holder of rs can compute it over
// this connection's RESUME_R, so a replayed RESUME_I ends here.
func (st *responder) checkResumeF(m3 []byte) error {
	rf, err := parseResumeF(m3[msgHeaderLen:])
	if err != nil {
		return reject(AlertProtocolError, "bad RESUME_F", "%v", err)
	}
	want := resumeMAC(st.rkeys.f, st.m1, st.m2)
	if !hmac.Equal(want[:], rf.mac[:]) {
		return reject(AlertBadSignature, "bad resumption MAC",
			"RESUME_F's MAC does not verify: the initiator does not hold session %x's secret (a replayed RESUME_I?)", st.resumed.ID)
	}
	return nil
}
