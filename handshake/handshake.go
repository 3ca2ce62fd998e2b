// Package handshake runs the RSA-authenticated, forward-secret key exchange
// of tunnel protocol v1 (PROTOCOL.md section 2) and v2 (PROTOCOL-v2.md,
// where HELLO_I is signed too) and hands the derived keys to the record
// layer:
//
//	initiator                               responder
//	preface || HELLO_I  ------------------>
//	                    <------------------  HELLO_R (signed)
//	KEY_I (signed)      ------------------>
//	FINISHED record     ------------------>  verify
//	                    <------------------  FINISHED record
//
// Initiate and (*Responder).Handshake return an established *frame.Conn.
//
// A version 2 handshake may also negotiate session resumption
// (PROTOCOL-v2.md section 6): both sides then get a Ticket, and the
// initiator may later continue the session on a new connection with
// Resume, which proves possession of the ticket's secret with MACs over
// fresh randoms and a fresh X25519 exchange, without RSA:
//
//	initiator                               responder
//	preface || RESUME_I (mac_i) --------->  session known? key? mac_i?
//	                    <------------------  RESUME_R (mac_r)
//	RESUME_F (mac_f), FINISHED record --->  mac_f? FINISHED?
//	                    <------------------  FINISHED record
package handshake

import (
	"context"
	"crypto"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

// DefaultTimeout bounds a whole handshake when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// HelloTimeout bounds, within the handshake's own bound, how long a
// responder waits for the preface and HELLO_I: a real initiator sends both
// at once, so a connection that has not within this time is cut before it
// costs more than a goroutine and a socket.
const HelloTimeout = 2 * time.Second

// DefaultKeyIDeadline bounds, when Config.KeyIDeadline is zero, how long a
// responder waits for KEY_I once it has sent HELLO_R: a round trip and the
// initiator's RSA work (an OAEP encryption and a signature: tens of
// milliseconds even with 8192-bit keys), with room for a slow link. Until
// KEY_I a version 1 initiator has proven nothing, so this is how long a
// forged version 1 hello can hold a slot.
const DefaultKeyIDeadline = 2 * time.Second

// HelloSkew is how far the time of a version 2 HELLO_I may be from the
// responder's clock, either way. Hellos are remembered for replay for as
// long as they could be accepted, up to twice this (PROTOCOL-v2.md 2.4).
const HelloSkew = 2 * time.Minute

// Errors of a failed handshake. A local rejection and a peer's ALERT with
// the same meaning both match the same sentinel with errors.Is.
var (
	ErrNotTunnel          = errors.New("handshake: peer does not speak the tunnel protocol")
	ErrProtocol           = errors.New("handshake: protocol error")
	ErrUnsupportedVersion = errors.New("handshake: unsupported protocol version")
	ErrNoCommonSuite      = errors.New("handshake: no common record suite")
	ErrUnknownKey         = errors.New("handshake: key not authorized")
	ErrBadSignature       = errors.New("handshake: bad signature")
	ErrDecrypt            = errors.New("handshake: key transport decryption failed")
	ErrInternal           = errors.New("handshake: internal error")
	ErrBusy               = errors.New("handshake: responder busy")
	// ErrStaleHello: a version 2 HELLO_I whose time is more than HelloSkew
	// from the responder's clock (ALERT stale_hello): one of the two clocks
	// is wrong.
	ErrStaleHello = errors.New("handshake: hello time outside the responder's window (clock skew)")
	// ErrReplayedHello: a version 2 HELLO_I seen before within the window;
	// the peer receives ALERT stale_hello, so that a replayer learns
	// nothing more.
	ErrReplayedHello = errors.New("handshake: hello replayed")
	// ErrInappropriateFallback: a responder that speaks version 2 received
	// a version 1 hello marked as a fallback from version 2 (ALERT
	// inappropriate_fallback): the ALERT unsupported_version that made the
	// initiator fall back was not the responder's; someone on the path
	// forged it.
	ErrInappropriateFallback = errors.New("handshake: version fallback refused: the responder speaks version 2")
	// ErrUnknownSession: a resumption named a session the responder cannot
	// resume: unknown, expired, or resumption is off there (ALERT
	// unknown_session). The initiator makes a full handshake instead.
	ErrUnknownSession = errors.New("handshake: unknown or expired session")
)

var alertErrors = map[AlertCode]error{
	AlertProtocolError:         ErrProtocol,
	AlertUnsupportedVersion:    ErrUnsupportedVersion,
	AlertNoCommonSuite:         ErrNoCommonSuite,
	AlertUnknownKey:            ErrUnknownKey,
	AlertBadSignature:          ErrBadSignature,
	AlertDecryptError:          ErrDecrypt,
	AlertInternalError:         ErrInternal,
	AlertBusy:                  ErrBusy,
	AlertStaleHello:            ErrStaleHello,
	AlertInappropriateFallback: ErrInappropriateFallback,
	AlertUnknownSession:        ErrUnknownSession,
}

// AlertError is an ALERT the peer sent: it rejected the handshake.
type AlertError struct {
	Code   AlertCode
	Reason string // the peer's words, made printable
}

func (e *AlertError) Error() string {
	return fmt.Sprintf("handshake: peer rejected the handshake (%s): %s", e.Code, e.Reason)
}

// Is makes a received ALERT match the sentinel of its code.
func (e *AlertError) Is(target error) bool { return alertErrors[e.Code] == target }

// Config configures either side of a handshake.
type Config struct {
	// PrivateKey is this side's long-term key. Required.
	PrivateKey *rsa.PrivateKey
	// PeerKey is the responder's pinned public key. The initiator requires
	// it or PeerKeys.
	PeerKey *rsa.PublicKey
	// PeerKeys, when not empty, are the responder keys the initiator
	// accepts, any of them (HELLO_R names the one the responder holds), and
	// PeerKey is not used: during a rotation of the responder's key both
	// the old and the new key are pinned.
	PeerKeys *KeySet
	// Authorized holds the initiator keys a responder accepts. Required by
	// the responder.
	Authorized *KeySet
	// Timeout bounds the whole handshake. Zero means DefaultTimeout.
	Timeout time.Duration
	// Frame configures the record layer of the established connection.
	Frame *frame.Config

	// Version is the protocol version an initiator speaks: Version1 or
	// Version2. Zero means Version1. A responder that speaks only version 1
	// answers a version 2 hello with ALERT unsupported_version: Initiate
	// then fails with an error matching ErrUnsupportedVersion, and the
	// caller redials with Version1 and Fallback set.
	Version int
	// Fallback, with Version1, marks the hello as sent by an initiator that
	// speaks version 2 but was refused it: a responder that speaks version 2
	// then refuses the hello (ErrInappropriateFallback), since the refusal
	// must have been forged.
	Fallback bool
	// MinVersion is the oldest version a responder accepts. Zero means
	// Version1; Version2 refuses version 1 hellos with ALERT
	// unsupported_version, for exits whose entries all speak version 2.
	MinVersion int
	// KeyIDeadline bounds how long a responder waits for KEY_I after it has
	// sent HELLO_R (within Timeout). Zero means DefaultKeyIDeadline.
	KeyIDeadline time.Duration
	// Now is the clock of version 2 hellos: the initiator writes it, the
	// responder compares with it. Nil means time.Now.
	Now func() time.Time

	// ResumeWindow turns session resumption on (PROTOCOL-v2.md section 6)
	// for version 2 handshakes. An initiator with a positive window offers
	// it in HELLO_I; a responder with a positive window accepts an offer
	// and announces this window, in whole seconds rounded up. When both do,
	// Result.Ticket is set on both sides. Zero: resumption off (a responder
	// then answers RESUME_I with ALERT unknown_session).
	ResumeWindow time.Duration
	// Sessions is where a responder looks up the session a RESUME_I names.
	// Nil: every resumption is answered ALERT unknown_session.
	Sessions SessionLookup
}

// SessionLookup finds the sessions a responder can resume. Resumable is
// called once per RESUME_I, before any other check but parsing, so it must
// be cheap (a map lookup); it must report false for a session that is gone
// or whose window has passed. It must be safe for concurrent use.
type SessionLookup interface {
	Resumable(id [SessionIDLen]byte) (Ticket, bool)
}

// Ticket is what either side keeps of a session that negotiated
// resumption: enough to resume it on a new connection. Secret is rs, the
// resumption secret; whoever holds it can resume the session, so it lives
// only in memory and is wiped when the session ends.
type Ticket struct {
	ID     [SessionIDLen]byte // session_id, chosen by the responder
	Secret [32]byte           // rs (PROTOCOL-v2.md section 6.1)
	// PeerKeyID is the key id of the peer's RSA key: on the responder the
	// initiator's key, which a resumption must present again; on the
	// initiator the responder's key, which must still be pinned to resume.
	PeerKeyID [KeyIDLen]byte
	// Window is how long the responder keeps the session resumable after
	// its connection breaks, as it announced it (whole seconds).
	Window time.Duration
}

// resumeWindowSeconds is the window a responder announces: cfg's, in whole
// seconds rounded up, within a u32.
func (c *Config) resumeWindowSeconds() uint32 {
	s := (c.ResumeWindow + time.Second - 1) / time.Second
	return uint32(min(max(s, 1), 1<<32-1))
}

func (c *Config) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

func (c *Config) keyIDeadline() time.Duration {
	if c.KeyIDeadline > 0 {
		return c.KeyIDeadline
	}
	return DefaultKeyIDeadline
}

func (c *Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// version is the version an initiator speaks.
func (c *Config) version() byte {
	if c.Version == Version2 {
		return Version2
	}
	return Version1
}

// checkVersions rejects versions this package does not speak.
func (c *Config) checkVersions() error {
	for _, v := range []struct {
		name string
		v    int
	}{{"Version", c.Version}, {"MinVersion", c.MinVersion}} {
		if v.v != 0 && v.v != Version1 && v.v != Version2 {
			return fmt.Errorf("handshake: %s %d: this package speaks versions %d and %d", v.name, v.v, Version1, Version2)
		}
	}
	if c.Fallback && c.Version == Version2 {
		return errors.New("handshake: Fallback goes with Version 1, the version fallen back to")
	}
	return nil
}

// checkInitiator checks the keys an initiator needs: both present, and of a
// size the protocol allows (NewKeySet has checked those of PeerKeys).
func (c *Config) checkInitiator() error {
	if err := c.checkVersions(); err != nil {
		return err
	}
	if err := checkKey(privatePublic(c.PrivateKey)); err != nil {
		return fmt.Errorf("handshake: initiator PrivateKey: %w", err)
	}
	if c.PeerKeys != nil && c.PeerKeys.Len() > 0 {
		return nil
	}
	if err := checkKey(c.PeerKey); err != nil {
		return fmt.Errorf("handshake: initiator PeerKey: %w", err)
	}
	return nil
}

// checkResponder checks the keys a responder needs: its own, of a size the
// protocol allows, and at least one authorized initiator key (NewKeySet and
// LoadAuthorizedKeys have checked those).
func (c *Config) checkResponder() error {
	if err := c.checkVersions(); err != nil {
		return err
	}
	if err := checkKey(privatePublic(c.PrivateKey)); err != nil {
		return fmt.Errorf("handshake: responder PrivateKey: %w", err)
	}
	if c.Authorized == nil || c.Authorized.Len() == 0 {
		return errors.New("handshake: responder needs at least one authorized initiator key")
	}
	return nil
}

// privatePublic is k's public half, nil for a nil k.
func privatePublic(k *rsa.PrivateKey) *rsa.PublicKey {
	if k == nil {
		return nil
	}
	return &k.PublicKey
}

// Result is an established connection and what was learnt on the way.
type Result struct {
	Conn            *frame.Conn
	PeerKey         *rsa.PublicKey
	PeerFingerprint string
	Suite           byte
	Version         int           // the protocol version spoken
	Duration        time.Duration // from start to keys in hand
	// Ticket is set after a full handshake that negotiated resumption, on
	// both sides; Conn then carries ACK records (frame.Config.Acks). Nil
	// otherwise, and after a resumption (the session's ticket is unchanged).
	Ticket *Ticket
	// Resumed names the session a resumption continued (Resume, or a
	// responder that received RESUME_I); nil after a full handshake. Conn
	// then carries ACK records, and its first record after FINISHED each
	// way must be an ACK (PROTOCOL-v2.md section 6.2).
	Resumed *[SessionIDLen]byte
}

// rejection is a local decision to end the handshake with an ALERT.
type rejection struct {
	code   AlertCode
	reason string // sent to the peer
	err    error  // returned locally
}

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

// reject builds a rejection whose local error wraps the code's sentinel.
func reject(code AlertCode, reason string, format string, args ...any) *rejection {
	return &rejection{
		code:   code,
		reason: reason,
		err:    fmt.Errorf("%w: %s", alertErrors[code], fmt.Sprintf(format, args...)),
	}
}

// rejectAs is reject with a local error wrapping sentinel rather than the
// code's: for refusals that share a code on the wire but not in the logs.
func rejectAs(code AlertCode, sentinel error, reason string, format string, args ...any) *rejection {
	return &rejection{
		code:   code,
		reason: reason,
		err:    fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...)),
	}
}

// alertLinger bounds how long a side that sent an ALERT keeps reading
// before it closes.
const alertLinger = 250 * time.Millisecond

// sendAlert writes an ALERT for a rejection, best effort.
func sendAlert(conn net.Conn, r *rejection) {
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	a := &alert{code: r.code, reason: r.reason}
	conn.Write(appendMsg(nil, msgAlert, a.body()))
}

// closeAfterAlert sends the ALERT of r and closes conn. Closing a TCP
// socket with unread input (the initiator pipelines FINISHED after KEY_I)
// makes the kernel send RST, which can destroy the ALERT in flight; so it
// half-closes first and drains what the peer already sent, briefly.
func closeAfterAlert(conn net.Conn, r *rejection) {
	sendAlert(conn, r)
	if cw, ok := conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		conn.SetReadDeadline(time.Now().Add(alertLinger))
		io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
	}
	conn.Close()
}

// guard applies the handshake's time bound and ctx to conn: it sets a
// deadline and closes conn if ctx ends first. The returned stop undoes both.
func guard(ctx context.Context, conn net.Conn, d time.Duration) (stop func() bool) {
	conn.SetDeadline(time.Now().Add(d))
	cancel := context.AfterFunc(ctx, func() { conn.Close() })
	return func() bool {
		conn.SetDeadline(time.Time{})
		return cancel()
	}
}

// ioError turns a read or write failure into an error that says what the
// handshake was doing, and whether it timed out or was cancelled.
func ioError(ctx context.Context, step string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("handshake: %s: %w", step, ctx.Err())
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("handshake: %s: timed out: %w", step, err)
	}
	return fmt.Errorf("handshake: %s: %w", step, err)
}

// digest is SHA-256 over the concatenation of parts.
func digest(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

var pssOptions = &rsa.PSSOptions{SaltLength: 32, Hash: crypto.SHA256}

// signedHash is what RSA-PSS signs: SHA-256(context || 0x00 || digest).
func signedHash(context string, d []byte) []byte {
	return digest([]byte(context), []byte{0}, d)
}

func sign(k *rsa.PrivateKey, context string, d []byte) ([]byte, error) {
	return rsa.SignPSS(rand.Reader, k, crypto.SHA256, signedHash(context, d), pssOptions)
}

func verify(pub *rsa.PublicKey, context string, d, sig []byte) error {
	return rsa.VerifyPSS(pub, crypto.SHA256, signedHash(context, d), sig, pssOptions)
}

// schedule is the key schedule of section 2.4.
type schedule struct {
	th       [32]byte
	prk      []byte
	i2r, r2i [32]byte
}

func deriveSchedule(m1, m2, m3, secret, x25519Shared, mlkemShared []byte) (*schedule, error) {
	s := &schedule{th: [32]byte(digest(m1, m2, m3))}
	ikm := make([]byte, 0, 96)
	ikm = append(append(append(ikm, secret...), x25519Shared...), mlkemShared...)
	defer clear(ikm)
	var err error
	if s.prk, err = hkdf.Extract(sha256.New, ikm, s.th[:]); err != nil {
		return nil, err
	}
	i2r, err := hkdf.Expand(sha256.New, s.prk, "tunnel/1 i2r", 32)
	if err != nil {
		return nil, err
	}
	defer clear(i2r)
	r2i, err := hkdf.Expand(sha256.New, s.prk, "tunnel/1 r2i", 32)
	if err != nil {
		return nil, err
	}
	defer clear(r2i)
	s.i2r, s.r2i = [32]byte(i2r), [32]byte(r2i)
	return s, nil
}

// wipeSecrets clears what a handshake no longer needs once the record
// layer holds its traffic secrets: the schedule's PRK and secrets, the
// secret KEY_I transported and both shared secrets.
func (s *schedule) wipeSecrets(secret, x25519Shared, mlkemShared []byte) {
	clear(s.prk)
	clear(s.i2r[:])
	clear(s.r2i[:])
	clear(secret)
	clear(x25519Shared)
	clear(mlkemShared)
}

// resumptionSecret is rs = HKDF-Expand(prk, "tunnel/2 resumption", 32) of
// a full handshake's schedule (PROTOCOL-v2.md section 6.1); call it before
// wipeSecrets.
func (s *schedule) resumptionSecret() [32]byte {
	return expand32(s.prk, labelResumption)
}

// deriveResumeSchedule is the key schedule of a resumption (PROTOCOL-v2.md
// section 6.3): th over the three messages, prk from rs and the X25519
// shared secret, and the traffic secrets under their own labels.
func deriveResumeSchedule(m1, m2, m3 []byte, rs [32]byte, x25519Shared []byte) (*schedule, error) {
	s := &schedule{th: [32]byte(digest(m1, m2, m3))}
	ikm := make([]byte, 0, 64)
	ikm = append(append(ikm, rs[:]...), x25519Shared...)
	defer clear(ikm)
	var err error
	if s.prk, err = hkdf.Extract(sha256.New, ikm, s.th[:]); err != nil {
		return nil, err
	}
	s.i2r = expand32(s.prk, labelResumeI2R)
	s.r2i = expand32(s.prk, labelResumeR2I)
	return s, nil
}

// expand32 is HKDF-Expand(secret, label, 32) with SHA-256.
func expand32(secret []byte, label string) (out [32]byte) {
	b, err := hkdf.Expand(sha256.New, secret, label, 32)
	if err != nil {
		panic("handshake: hkdf.Expand of 32 bytes: " + err.Error())
	}
	copy(out[:], b)
	clear(b)
	return out
}

// resumeKeys are the MAC keys of a resumption, from rs.
type resumeKeys struct{ i, r, f [32]byte }

func deriveResumeKeys(rs [32]byte) resumeKeys {
	return resumeKeys{
		i: expand32(rs[:], labelResumeI),
		r: expand32(rs[:], labelResumeR),
		f: expand32(rs[:], labelResumeF),
	}
}

func (k *resumeKeys) wipe() { clear(k.i[:]); clear(k.r[:]); clear(k.f[:]) }

// resumeMAC is HMAC-SHA256(key, SHA-256(parts...)).
func resumeMAC(key [32]byte, parts ...[]byte) [macLen]byte {
	h := hmac.New(sha256.New, key[:])
	h.Write(digest(parts...))
	return [macLen]byte(h.Sum(nil))
}

// frameConfig is cfg.Frame with ACK records on exactly when the connection
// negotiated resumption or resumes a session: an ACK elsewhere is an
// unknown record type.
func (c *Config) frameConfig(acks bool) *frame.Config {
	var fc frame.Config
	if c.Frame != nil {
		fc = *c.Frame
	}
	fc.Acks = acks
	return &fc
}

func (s *schedule) initiatorKeys() frame.Keys {
	return frame.Keys{Send: s.i2r, Recv: s.r2i, Transcript: s.th}
}

func (s *schedule) responderKeys() frame.Keys {
	return frame.Keys{Send: s.r2i, Recv: s.i2r, Transcript: s.th}
}
