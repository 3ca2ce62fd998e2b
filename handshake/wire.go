package handshake

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/tunnel-dev/tunnel/handshake/wiretext"
)

// Wire format of the handshake (PROTOCOL.md section 2.1). A message is
// type u8 | length u24 | body, with body at most maxBody bytes.
const (
	prefaceLen   = 8
	msgHeaderLen = 4
	maxBody      = 8192

	randomLen  = 32
	x25519Len  = 32
	mlkemEKLen = 1184
	mlkemCTLen = 1088

	// fixed parts of HELLO_I after the suite list, and of HELLO_R before sig_len
	helloIFixed = randomLen + x25519Len + mlkemEKLen + KeyIDLen
	helloRFixed = 1 + randomLen + x25519Len + mlkemCTLen + KeyIDLen

	timeLen = 8 // time u64 of a version 2 HELLO_I

	// Session resumption (PROTOCOL-v2.md section 6).
	SessionIDLen        = 16
	macLen              = 32
	windowLen           = 4                        // window u32, seconds
	resumptionAcceptLen = SessionIDLen + windowLen // HELLO_R's ext 0x01 value
	resumeIBody         = SessionIDLen + KeyIDLen + randomLen + x25519Len + macLen
	resumeRBody         = randomLen + x25519Len + macLen
	resumeFBody         = macLen
)

// Message types.
const (
	msgHelloI byte = 0x01
	msgHelloR byte = 0x02
	msgKeyI   byte = 0x03
	msgAlert  byte = 0x15

	// Resumption (PROTOCOL-v2.md section 6.3): RESUME_I takes the place of
	// HELLO_I after a version 2 preface.
	msgResumeI byte = 0x04
	msgResumeR byte = 0x05
	msgResumeF byte = 0x06
)

// Protocol versions, the last byte of the preface (PROTOCOL-v2.md section 1).
const (
	Version1 = 1
	Version2 = 2
)

// ProtocolVersion is the version of PROTOCOL.md, version 1.
//
// Deprecated: use Version1 or Version2.
const ProtocolVersion = Version1

// SuiteAES256CFBHMACSHA256 is record suite 0x01, the only one defined.
const SuiteAES256CFBHMACSHA256 byte = 0x01

// suiteFallback is never a record suite: a version 2 initiator lists it in
// a version 1 HELLO_I that it sends because a responder refused version 2,
// and a responder that speaks version 2 refuses such a hello
// (PROTOCOL-v2.md section 4).
const suiteFallback byte = 0xFE

// prefaceMagic is the preface without its version byte.
const prefaceMagic = "TUNNEL\x00"

var (
	preface   = [prefaceLen]byte{'T', 'U', 'N', 'N', 'E', 'L', 0x00, Version1}
	prefaceV2 = [prefaceLen]byte{'T', 'U', 'N', 'N', 'E', 'L', 0x00, Version2}
)

// Signature and encryption contexts (PROTOCOL.md section 2.2,
// PROTOCOL-v2.md section 3). Version 2 keeps the OAEP label: KEY_I is bound
// to its transcript by sig_i, under a context of its own version.
const (
	contextResponder  = "tunnel/1 responder signature"
	contextInitiator  = "tunnel/1 initiator signature"
	contextHello2     = "tunnel/2 hello signature"
	contextResponder2 = "tunnel/2 responder signature"
	contextInitiator2 = "tunnel/2 initiator signature"
	labelOAEP         = "tunnel/1 key transport"
)

// HKDF labels of session resumption (PROTOCOL-v2.md section 6).
const (
	labelResumption = "tunnel/2 resumption"       // rs, from a full handshake's prk
	labelResumeI    = "tunnel/2 resume initiator" // k_i, from rs
	labelResumeR    = "tunnel/2 resume responder" // k_r, from rs
	labelResumeF    = "tunnel/2 resume finished"  // k_f, from rs
	labelResumeI2R  = "tunnel/2 resume i2r"       // s_i2r, from a resumption's prk
	labelResumeR2I  = "tunnel/2 resume r2i"       // s_r2i, from a resumption's prk
)

// Extension types of the extension blocks of version 2 (PROTOCOL-v2.md
// section 2.3).
const (
	extResumption byte = 0x01 // session resumption: offered (empty) in HELLO_I, accepted in HELLO_R (section 6.1)
)

// findExtension returns the value of the entry of type typ of a well
// formed extension block (parseExtensions has accepted it).
func findExtension(block []byte, typ byte) ([]byte, bool) {
	exts, _ := parseExtensions(block)
	for _, e := range exts {
		if e.typ == typ {
			return e.val, true
		}
	}
	return nil, false
}

// resumptionAccept is the value of HELLO_R's ext 0x01: session_id [16] |
// window u32 (seconds, at least 1).
type resumptionAccept struct {
	id     [SessionIDLen]byte
	window uint32
}

func (a *resumptionAccept) value() []byte {
	return binary.BigEndian.AppendUint32(append([]byte(nil), a.id[:]...), a.window)
}

func parseResumptionAccept(val []byte) (*resumptionAccept, error) {
	r := &reader{b: val}
	a := &resumptionAccept{}
	copy(a.id[:], r.bytes(SessionIDLen))
	if w := r.bytes(windowLen); w != nil {
		a.window = binary.BigEndian.Uint32(w)
	}
	if err := r.done("resumption extension"); err != nil {
		return nil, err
	}
	if a.window == 0 {
		return nil, malformed("resumption extension with a window of 0 s")
	}
	return a, nil
}

// errMalformed is wrapped by every parser error; it maps to ALERT
// protocol_error.
var errMalformed = errors.New("malformed message")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
}

// appendMsg appends type | length u24 | body.
func appendMsg(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ, byte(len(body)>>16), byte(len(body)>>8), byte(len(body)))
	return append(dst, body...)
}

// readMsg reads one whole message of one of the wanted types and returns
// it with its header. An unwanted type is an *unexpectedError.
func readMsg(r io.Reader, want ...byte) (typ byte, msg []byte, err error) {
	var hdr [msgHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	if !slices.Contains(want, hdr[0]) {
		return 0, nil, &unexpectedError{hdr: hdr}
	}
	n := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	if n > maxBody {
		return 0, nil, malformed("message body of %d bytes exceeds %d", n, maxBody)
	}
	msg = make([]byte, msgHeaderLen+n)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[msgHeaderLen:]); err != nil {
		return 0, nil, err
	}
	return hdr[0], msg, nil
}

// unexpectedError is a message of a type the handshake does not expect at
// this point; hdr is kept to show what the peer sent.
type unexpectedError struct{ hdr [msgHeaderLen]byte }

func (e *unexpectedError) Error() string {
	return fmt.Sprintf("unexpected message type %#02x (first bytes %q)", e.hdr[0], wiretext.Printable(e.hdr[:]))
}

// reader consumes a body field by field; the first short read sticks.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) bytes(n int) []byte {
	if r.bad || len(r.b) < n {
		r.bad = true
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() byte {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u16() int {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(b))
}

// done reports an error if a field was short or bytes are left over.
func (r *reader) done(what string) error {
	if r.bad {
		return malformed("%s is truncated", what)
	}
	if len(r.b) != 0 {
		return malformed("%s has %d trailing bytes", what, len(r.b))
	}
	return nil
}

type helloI struct {
	suites  []byte
	random  []byte // randomLen
	x25519  []byte // x25519Len
	mlkemEK []byte // mlkemEKLen
	keyID   [KeyIDLen]byte
}

func (m *helloI) body() []byte {
	b := make([]byte, 0, 1+len(m.suites)+helloIFixed)
	b = append(b, byte(len(m.suites)))
	b = append(b, m.suites...)
	b = append(b, m.random...)
	b = append(b, m.x25519...)
	b = append(b, m.mlkemEK...)
	return append(b, m.keyID[:]...)
}

func parseHelloI(body []byte) (*helloI, error) {
	r := &reader{b: body}
	m := &helloI{}
	m.suites = r.bytes(int(r.u8()))
	m.random = r.bytes(randomLen)
	m.x25519 = r.bytes(x25519Len)
	m.mlkemEK = r.bytes(mlkemEKLen)
	copy(m.keyID[:], r.bytes(KeyIDLen))
	return m, r.done("HELLO_I")
}

// helloI2 is a version 2 HELLO_I: the fields of version 1, then the
// initiator's clock, an extension block and sig_h. The signature covers the
// preface and the message header, so signedMsg needs the signature's length
// before the signature exists.
type helloI2 struct {
	helloI
	time uint64 // Unix seconds
	ext  []byte // extension block, well formed (parseExtensions)
	sig  []byte
}

// signedBody is the body up to, not including, sig_len.
func (m *helloI2) signedBody() []byte {
	b := binary.BigEndian.AppendUint64(m.helloI.body(), m.time)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.ext)))
	return append(b, m.ext...)
}

// signedMsg is what sig_h's digest covers: preface || header || signedBody,
// with the header's length counting a signature of sigLen bytes.
func (m *helloI2) signedMsg(pre []byte, sigLen int) []byte {
	sb := m.signedBody()
	n := len(sb) + 2 + sigLen
	b := append(slices.Clip(pre), msgHelloI, byte(n>>16), byte(n>>8), byte(n))
	return append(b, sb...)
}

func (m *helloI2) body() []byte {
	b := binary.BigEndian.AppendUint16(m.signedBody(), uint16(len(m.sig)))
	return append(b, m.sig...)
}

func parseHelloI2(body []byte) (*helloI2, error) {
	r := &reader{b: body}
	m := &helloI2{}
	m.suites = r.bytes(int(r.u8()))
	m.random = r.bytes(randomLen)
	m.x25519 = r.bytes(x25519Len)
	m.mlkemEK = r.bytes(mlkemEKLen)
	copy(m.keyID[:], r.bytes(KeyIDLen))
	if t := r.bytes(timeLen); t != nil {
		m.time = binary.BigEndian.Uint64(t)
	}
	m.ext = r.bytes(r.u16())
	m.sig = r.bytes(r.u16())
	if err := r.done("HELLO_I"); err != nil {
		return m, err
	}
	if _, err := parseExtensions(m.ext); err != nil {
		return m, fmt.Errorf("HELLO_I: %w", err)
	}
	return m, nil
}

type helloR struct {
	suite   byte
	random  []byte
	x25519  []byte
	mlkemCT []byte
	keyID   [KeyIDLen]byte
	sig     []byte
}

// signedBody is the body up to, not including, sig_len.
func (m *helloR) signedBody() []byte {
	b := make([]byte, 0, helloRFixed+2+len(m.sig))
	b = append(b, m.suite)
	b = append(b, m.random...)
	b = append(b, m.x25519...)
	b = append(b, m.mlkemCT...)
	return append(b, m.keyID[:]...)
}

func (m *helloR) body() []byte {
	b := binary.BigEndian.AppendUint16(m.signedBody(), uint16(len(m.sig)))
	return append(b, m.sig...)
}

func parseHelloR(body []byte) (*helloR, error) {
	r := &reader{b: body}
	m := &helloR{}
	m.suite = r.u8()
	m.random = r.bytes(randomLen)
	m.x25519 = r.bytes(x25519Len)
	m.mlkemCT = r.bytes(mlkemCTLen)
	copy(m.keyID[:], r.bytes(KeyIDLen))
	m.sig = r.bytes(r.u16())
	return m, r.done("HELLO_R")
}

// helloR2 is a version 2 HELLO_R: the fields of version 1 up to key_id_r,
// then an extension block, then sig_r.
type helloR2 struct {
	helloR
	ext []byte // extension block, well formed (parseExtensions)
}

// signedBody is the body up to, not including, sig_len.
func (m *helloR2) signedBody() []byte {
	b := binary.BigEndian.AppendUint16(m.helloR.signedBody(), uint16(len(m.ext)))
	return append(b, m.ext...)
}

func (m *helloR2) body() []byte {
	b := binary.BigEndian.AppendUint16(m.signedBody(), uint16(len(m.sig)))
	return append(b, m.sig...)
}

func parseHelloR2(body []byte) (*helloR2, error) {
	r := &reader{b: body}
	m := &helloR2{}
	m.suite = r.u8()
	m.random = r.bytes(randomLen)
	m.x25519 = r.bytes(x25519Len)
	m.mlkemCT = r.bytes(mlkemCTLen)
	copy(m.keyID[:], r.bytes(KeyIDLen))
	m.ext = r.bytes(r.u16())
	m.sig = r.bytes(r.u16())
	if err := r.done("HELLO_R"); err != nil {
		return m, err
	}
	if _, err := parseExtensions(m.ext); err != nil {
		return m, fmt.Errorf("HELLO_R: %w", err)
	}
	return m, nil
}

// extension is one entry of an extension block: type u8 | len u16 | value.
type extension struct {
	typ byte
	val []byte
}

// appendExtensions appends the entries of an extension block, without the
// block's own length.
func appendExtensions(dst []byte, exts ...extension) []byte {
	for _, e := range exts {
		dst = append(dst, e.typ)
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(e.val)))
		dst = append(dst, e.val...)
	}
	return dst
}

// parseExtensions splits an extension block into its entries. An entry cut
// short or a type that occurs twice is malformed; the caller ignores the
// types it does not know.
func parseExtensions(block []byte) ([]extension, error) {
	r := &reader{b: block}
	var out []extension
	var seen [256]bool
	for len(r.b) > 0 && !r.bad {
		e := extension{typ: r.u8()}
		e.val = r.bytes(r.u16())
		if r.bad {
			break
		}
		if seen[e.typ] {
			return nil, malformed("extension %#02x occurs twice", e.typ)
		}
		seen[e.typ] = true
		out = append(out, e)
	}
	return out, r.done("extension block")
}

type keyI struct {
	ct  []byte
	sig []byte
}

func (m *keyI) signedBody() []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(m.ct)))
	return append(b, m.ct...)
}

func (m *keyI) body() []byte {
	b := binary.BigEndian.AppendUint16(m.signedBody(), uint16(len(m.sig)))
	return append(b, m.sig...)
}

func parseKeyI(body []byte) (*keyI, error) {
	r := &reader{b: body}
	m := &keyI{}
	m.ct = r.bytes(r.u16())
	m.sig = r.bytes(r.u16())
	return m, r.done("KEY_I")
}

// resumeI is RESUME_I, which the mac covers from the preface up to mac_i.
type resumeI struct {
	sessionID [SessionIDLen]byte
	keyID     [KeyIDLen]byte
	random    [randomLen]byte
	x25519    [x25519Len]byte
	mac       [macLen]byte
}

// signedMsg is what mac_i's digest covers: preface || header || body up
// to mac_i, the header's length counting mac_i.
func (m *resumeI) signedMsg(pre []byte) []byte {
	b := append(slices.Clip(pre), msgResumeI, 0, 0, resumeIBody)
	b = append(b, m.sessionID[:]...)
	b = append(b, m.keyID[:]...)
	b = append(b, m.random[:]...)
	return append(b, m.x25519[:]...)
}

// msg is preface || RESUME_I.
func (m *resumeI) msg(pre []byte) []byte { return append(m.signedMsg(pre), m.mac[:]...) }

func parseResumeI(body []byte) (*resumeI, error) {
	r := &reader{b: body}
	m := &resumeI{}
	copy(m.sessionID[:], r.bytes(SessionIDLen))
	copy(m.keyID[:], r.bytes(KeyIDLen))
	copy(m.random[:], r.bytes(randomLen))
	copy(m.x25519[:], r.bytes(x25519Len))
	copy(m.mac[:], r.bytes(macLen))
	return m, r.done("RESUME_I")
}

// resumeR is RESUME_R.
type resumeR struct {
	random [randomLen]byte
	x25519 [x25519Len]byte
	mac    [macLen]byte
}

// signedMsg is the part of RESUME_R that mac_r's digest covers after M1:
// header || body up to mac_r.
func (m *resumeR) signedMsg() []byte {
	b := []byte{msgResumeR, 0, 0, resumeRBody}
	b = append(b, m.random[:]...)
	return append(b, m.x25519[:]...)
}

func (m *resumeR) msg() []byte { return append(m.signedMsg(), m.mac[:]...) }

func parseResumeR(body []byte) (*resumeR, error) {
	r := &reader{b: body}
	m := &resumeR{}
	copy(m.random[:], r.bytes(randomLen))
	copy(m.x25519[:], r.bytes(x25519Len))
	copy(m.mac[:], r.bytes(macLen))
	return m, r.done("RESUME_R")
}

// resumeF is RESUME_F.
type resumeF struct{ mac [macLen]byte }

func (m *resumeF) msg() []byte { return appendMsg(nil, msgResumeF, m.mac[:]) }

func parseResumeF(body []byte) (*resumeF, error) {
	r := &reader{b: body}
	m := &resumeF{}
	copy(m.mac[:], r.bytes(macLen))
	return m, r.done("RESUME_F")
}

// AlertCode is the code of an ALERT message.
type AlertCode byte

// Alert codes (section 2.1).
const (
	AlertProtocolError      AlertCode = 1
	AlertUnsupportedVersion AlertCode = 2
	AlertNoCommonSuite      AlertCode = 3
	AlertUnknownKey         AlertCode = 4
	AlertBadSignature       AlertCode = 5
	AlertDecryptError       AlertCode = 6
	AlertInternalError      AlertCode = 7
	AlertBusy               AlertCode = 8
	// Version 2 (PROTOCOL-v2.md section 2.5): sent only to initiators that
	// speak version 2, or a version 1 hello marked as a fallback from it.
	AlertStaleHello            AlertCode = 9
	AlertInappropriateFallback AlertCode = 10
	// AlertUnknownSession answers a RESUME_I that names no session this
	// responder can resume (unknown, expired, or resumption off): the
	// initiator makes a full handshake instead (PROTOCOL-v2.md section 6.4).
	AlertUnknownSession AlertCode = 11
)

var alertNames = map[AlertCode]string{
	AlertProtocolError:         "protocol_error",
	AlertUnsupportedVersion:    "unsupported_version",
	AlertNoCommonSuite:         "no_common_suite",
	AlertUnknownKey:            "unknown_key",
	AlertBadSignature:          "bad_signature",
	AlertDecryptError:          "decrypt_error",
	AlertInternalError:         "internal_error",
	AlertBusy:                  "busy",
	AlertStaleHello:            "stale_hello",
	AlertInappropriateFallback: "inappropriate_fallback",
	AlertUnknownSession:        "unknown_session",
}

func (c AlertCode) String() string {
	if s, ok := alertNames[c]; ok {
		return s
	}
	return fmt.Sprintf("alert(%d)", byte(c))
}

type alert struct {
	code   AlertCode
	reason string
}

func (m *alert) body() []byte {
	reason := wiretext.Cut(m.reason, 255)
	b := []byte{byte(m.code), byte(len(reason))}
	return append(b, reason...)
}

func parseAlert(body []byte) (*alert, error) {
	r := &reader{b: body}
	m := &alert{code: AlertCode(r.u8())}
	m.reason = wiretext.Printable(r.bytes(int(r.u8())))
	return m, r.done("ALERT")
}
