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
)

// Message types.
const (
	msgHelloI byte = 0x01
	msgHelloR byte = 0x02
	msgKeyI   byte = 0x03
	msgAlert  byte = 0x15
)

// ProtocolVersion is the version byte this package speaks.
const ProtocolVersion = 1

// SuiteAES256CFBHMACSHA256 is record suite 0x01, the only one defined.
const SuiteAES256CFBHMACSHA256 byte = 0x01

// prefaceMagic is the preface without its version byte.
const prefaceMagic = "TUNNEL\x00"

var preface = [prefaceLen]byte{'T', 'U', 'N', 'N', 'E', 'L', 0x00, ProtocolVersion}

// Signature and encryption contexts (section 2.2).
const (
	contextResponder = "tunnel/1 responder signature"
	contextInitiator = "tunnel/1 initiator signature"
	labelOAEP        = "tunnel/1 key transport"
)

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
)

var alertNames = map[AlertCode]string{
	AlertProtocolError:      "protocol_error",
	AlertUnsupportedVersion: "unsupported_version",
	AlertNoCommonSuite:      "no_common_suite",
	AlertUnknownKey:         "unknown_key",
	AlertBadSignature:       "bad_signature",
	AlertDecryptError:       "decrypt_error",
	AlertInternalError:      "internal_error",
	AlertBusy:               "busy",
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
