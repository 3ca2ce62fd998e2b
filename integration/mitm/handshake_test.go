package mitm

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// Offsets of the fields of the handshake messages, header included, as
// the agents send them: protocol version 2 (handshake/PROTOCOL-v2.md), one
// suite offered, no extensions. Those after a variable-length RSA field
// are computed from the message (see keyISig).
const (
	hiNSuites  = 4
	hiSuite    = 5
	hiRandom   = 6
	hiX25519   = hiRandom + 32
	hiMLKEM    = hiX25519 + 32
	hiMLKEMRho = hiMLKEM + 1152 // the matrix seed at the end of the encapsulation key
	hiKeyID    = hiMLKEM + 1184
	hiTime     = hiKeyID + 32
	hiExtLen   = hiTime + 8
	hiSigLen   = hiExtLen + 2
	hiSig      = hiSigLen + 2

	hrSuite  = 4
	hrRandom = 5
	hrX25519 = hrRandom + 32
	hrMLKEM  = hrX25519 + 32
	hrKeyID  = hrMLKEM + 1088
	hrExtLen = hrKeyID + 32
	hrSigLen = hrExtLen + 2
	hrSig    = hrSigLen + 2

	kiCTLen = 4
	kiCT    = 6

	finTag = recHeaderLen + ivLen + 1 + 32 // the tag of a FINISHED record
)

// keyISig returns the offset of sig_i in a KEY_I message.
func keyISig(b []byte) int {
	return kiCT + int(binary.BigEndian.Uint16(b[kiCTLen:])) + 2
}

// Settings of the entries of the handshake cases: an application waits for
// a session for 1 s, a handshake gives up after 2 s.
var hsEntryFlags = []string{"--dial-timeout", "1s", "--handshake-timeout", "2s"}

// hsAttack is an attack on the handshake, made on every connection the entry
// makes. The specs are what the entry's first "cannot establish a session"
// line, and the exit's line about the attacked connection, must contain (a
// spec "a|b" accepts either).
type hsAttack struct {
	name  string
	match func(*unit) bool
	f     func(*unit) []action
	entry []string
	exit  []string
	// exitMsg is the exit's line about the connection: "handshake failed",
	// or "session closed" where the exit's part of the handshake succeeded
	// and only the entry rejects.
	exitMsg      string
	keepExitOpen bool // the exit must end the connection by its own timeout
}

// setMsgLen rewrites the u24 length of a handshake message to fit b.
func setMsgLen(b []byte) []byte {
	n := len(b) - msgHeaderLen
	b[1], b[2], b[3] = byte(n>>16), byte(n>>8), byte(n)
	return b
}

// splice replaces n bytes at off of message b by repl and fixes its length.
func splice(off, n int, repl []byte) func(*unit) []action {
	return func(u *unit) []action {
		b := append(append(append([]byte(nil), u.b[:off]...), repl...), u.b[off+n:]...)
		return forward(setMsgLen(b))
	}
}

// overwrite replaces len(repl) bytes at off, keeping the length.
func overwrite(off int, repl []byte) func(*unit) []action {
	return func(u *unit) []action {
		copy(u.b[off:], repl)
		return forward(u.b)
	}
}

// flipLowLen flips the lowest set bit of a message's u24 length: the
// message claims fewer bytes than it has.
func flipLowLen(u *unit) []action {
	n := int(u.b[1])<<16 | int(u.b[2])<<8 | int(u.b[3])
	low := n & -n
	n ^= low
	u.b[1], u.b[2], u.b[3] = byte(n>>16), byte(n>>8), byte(n)
	return forward(u.b)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func drop(*unit) []action { return nil }

func twice(u *unit) []action { return forward(u.b, append([]byte(nil), u.b...)) }

func finished(d dir) func(*unit) bool {
	return func(u *unit) bool { return u.dir == d && u.kind == kindRecord && u.seq == 0 }
}

// Expected log text.
const (
	rejected        = "peer rejected the handshake" // by the other side's ALERT
	entryBadSig     = "responder signature does not verify"
	entryNoFinished = "waiting for the responder's FINISHED"
	exitBadSig      = "initiator signature does not verify"
	exitBadHello    = "hello signature does not verify"
	exitInitFin     = "initiator's FINISHED"
)

func handshakeAttacks(t *testing.T, e *harness.Rig) []hsAttack {
	// The fingerprints of the key ids with bit 0 of their first byte
	// flipped, as the flip/*/key_id attacks make them.
	flipFP := func(fp string) string {
		id, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(fp, "SHA256:"))
		if err != nil || len(id) != 32 {
			t.Fatalf("fingerprint %s is not SHA256:<base64 of 32 bytes>", fp)
		}
		id[0] ^= 1
		return "SHA256:" + base64.RawStdEncoding.EncodeToString(id)
	}
	hi, hr, ki := is(i2r, kindHelloI), is(r2i, kindHelloR), is(i2r, kindKeyI)
	badSigAtEntry := func(name string, match func(*unit) bool, f func(*unit) []action) hsAttack {
		return hsAttack{name: name, match: match, f: f,
			entry: []string{"bad signature", entryBadSig}, exit: []string{rejected, "bad_signature"}}
	}
	// A field of HELLO_I altered: the entry's hello signature covers it, so
	// the exit refuses before it takes a slot or signs anything.
	badSigAtExit := func(name string, f func(*unit) []action) hsAttack {
		return hsAttack{name: name, match: hi, f: f,
			entry: []string{rejected, "bad_signature"}, exit: []string{"bad signature", exitBadHello}}
	}
	return []hsAttack{
		// One bit flipped in each field of each message.
		{name: "flip/preface/magic", match: is(i2r, kindPreface), f: flip(0, 0),
			entry: []string{"waiting for HELLO_R"}, exit: []string{"does not speak the tunnel protocol"}},
		{name: "flip/preface/version", match: is(i2r, kindPreface), f: flip(7, 0),
			entry: []string{rejected, "unsupported_version"}, exit: []string{"unsupported protocol version", "version 3"}},
		{name: "flip/HELLO_I/type", match: hi, f: flip(0, 1),
			entry: []string{rejected, "protocol_error", "expected HELLO_I"}, exit: []string{"unexpected message type 0x03"}},
		{name: "flip/HELLO_I/length-high", match: hi, f: flip(1, 7),
			entry: []string{rejected, "protocol_error"}, exit: []string{"exceeds 8192"}},
		{name: "flip/HELLO_I/length-low", match: hi, f: flipLowLen,
			entry: []string{rejected, "bad HELLO_I"}, exit: []string{"HELLO_I is truncated"}},
		// The fields after it shift by one byte: the signature's length is
		// then read from whatever bytes land there, and the message is too
		// short or too long for it.
		{name: "flip/HELLO_I/n_suites", match: hi, f: flip(hiNSuites, 0),
			entry: []string{rejected, "bad HELLO_I"}, exit: []string{"malformed message: HELLO_I"}},
		{name: "flip/HELLO_I/suite", match: hi, f: flip(hiSuite, 1),
			entry: []string{rejected, "no_common_suite"}, exit: []string{"no common record suite"}},
		badSigAtExit("flip/HELLO_I/random", flip(hiRandom+3, 4)),
		badSigAtExit("flip/HELLO_I/x25519", flip(hiX25519+9, 2)),
		badSigAtExit("flip/HELLO_I/mlkem-rho", flip(hiMLKEMRho+5, 0)),
		{name: "flip/HELLO_I/key_id", match: hi, f: flip(hiKeyID, 0),
			entry: []string{"rejected", "not authorized"}, exit: []string{"not authorized", flipFP(e.Entry.Fingerprint)}},
		// 2^32 s off: outside the clock window, refused before the signature.
		{name: "flip/HELLO_I/time", match: hi, f: flip(hiTime+3, 0),
			entry: []string{rejected, "stale_hello"}, exit: []string{"clock"}},
		badSigAtExit("flip/HELLO_I/time-second", flip(hiTime+7, 0)),
		{name: "flip/HELLO_I/ext_len", match: hi, f: flip(hiExtLen+1, 0),
			entry: []string{rejected, "bad HELLO_I"}, exit: []string{"malformed message: HELLO_I"}},
		badSigAtExit("flip/HELLO_I/sig", func(u *unit) []action { return flip(hiSig+10, 3)(u) }),

		{name: "flip/HELLO_R/type", match: hr, f: flip(0, 0),
			entry: []string{"unexpected message type 0x03"}, exit: []string{"waiting for KEY_I"}},
		{name: "flip/HELLO_R/length-high", match: hr, f: flip(1, 7),
			entry: []string{"exceeds 8192"}, exit: []string{rejected, "protocol_error"}},
		{name: "flip/HELLO_R/length-low", match: hr, f: flipLowLen,
			entry: []string{"HELLO_R is truncated"}, exit: []string{rejected, "bad HELLO_R"}},
		{name: "flip/HELLO_R/suite", match: hr, f: flip(hrSuite, 1),
			entry: []string{"responder chose suite 0x03, which was not offered"}, exit: []string{rejected, "no_common_suite"}},
		badSigAtEntry("flip/HELLO_R/random", hr, flip(hrRandom+1, 0)),
		badSigAtEntry("flip/HELLO_R/x25519", hr, flip(hrX25519+1, 6)),
		badSigAtEntry("flip/HELLO_R/mlkem", hr, flip(hrMLKEM+100, 3)),
		{name: "flip/HELLO_R/key_id", match: hr, f: flip(hrKeyID, 0),
			entry: []string{"pinned", e.Exit.Fingerprint, flipFP(e.Exit.Fingerprint)}, exit: []string{rejected, "unknown_key"}},
		{name: "flip/HELLO_R/sig_len", match: hr, f: flip(hrSigLen, 0),
			entry: []string{"malformed message: HELLO_R has", "trailing bytes"}, exit: []string{rejected, "bad HELLO_R"}},
		badSigAtEntry("flip/HELLO_R/sig", hr, flip(hrSig+10, 5)),

		{name: "flip/KEY_I/type", match: ki, f: flip(0, 1),
			entry: []string{rejected, "expected KEY_I"}, exit: []string{"waiting for KEY_I", "unexpected message type 0x01"}},
		{name: "flip/KEY_I/length-low", match: ki, f: flipLowLen,
			entry: []string{rejected, "bad KEY_I"}, exit: []string{"KEY_I is truncated"}},
		{name: "flip/KEY_I/ct_len", match: ki, f: flip(kiCTLen+1, 0),
			entry: []string{rejected, "bad KEY_I"}, exit: []string{"malformed message: KEY_I"}},
		{name: "flip/KEY_I/ct", match: ki, f: flip(kiCT+50, 0),
			entry: []string{rejected, "bad_signature"}, exit: []string{"bad signature", exitBadSig}},
		{name: "flip/KEY_I/sig", match: ki, f: func(u *unit) []action { return flip(keyISig(u.b)+50, 7)(u) },
			entry: []string{rejected, "bad_signature"}, exit: []string{"bad signature", exitBadSig}},

		{name: "flip/FINISHED-i2r/length", match: finished(i2r), f: flip(0, 7),
			entry: []string{entryNoFinished}, exit: []string{exitInitFin, logLength}},
		{name: "flip/FINISHED-i2r/iv", match: finished(i2r), f: flip(recHeaderLen+3, 3),
			entry: []string{entryNoFinished}, exit: []string{exitInitFin, logAuth}},
		{name: "flip/FINISHED-i2r/ciphertext", match: finished(i2r), f: flip(recHeaderLen+ivLen+5, 0),
			entry: []string{entryNoFinished}, exit: []string{exitInitFin, logAuth}},
		{name: "flip/FINISHED-i2r/tag", match: finished(i2r), f: flip(finTag+31, 6),
			entry: []string{entryNoFinished}, exit: []string{exitInitFin, logAuth}},
		{name: "flip/FINISHED-r2i/length", match: finished(r2i), f: flip(0, 7),
			entry: []string{entryNoFinished, logLength}, exitMsg: msgExitClosed, exit: []string{peerEnded}},
		{name: "flip/FINISHED-r2i/iv", match: finished(r2i), f: flip(recHeaderLen+3, 3),
			entry: []string{entryNoFinished, logAuth}, exitMsg: msgExitClosed, exit: []string{peerEnded}},
		{name: "flip/FINISHED-r2i/ciphertext", match: finished(r2i), f: flip(recHeaderLen+ivLen+5, 0),
			entry: []string{entryNoFinished, logAuth}, exitMsg: msgExitClosed, exit: []string{peerEnded}},
		{name: "flip/FINISHED-r2i/tag", match: finished(r2i), f: flip(finTag+31, 6),
			entry: []string{entryNoFinished, logAuth}, exitMsg: msgExitClosed, exit: []string{peerEnded}},

		// Key shares stripped (length adjusted) or altered.
		{name: "strip/HELLO_I/x25519", match: hi, f: splice(hiX25519, 32, nil),
			entry: []string{rejected, "bad HELLO_I"}, exit: []string{"HELLO_I is truncated"}},
		{name: "strip/HELLO_I/mlkem", match: hi, f: splice(hiMLKEM, 1184, nil),
			entry: []string{rejected, "bad HELLO_I"}, exit: []string{"HELLO_I is truncated"}},
		{name: "strip/HELLO_R/x25519", match: hr, f: splice(hrX25519, 32, nil),
			entry: []string{"malformed message: HELLO_R"}, exit: []string{rejected, "bad HELLO_R"}},
		{name: "strip/HELLO_R/mlkem", match: hr, f: splice(hrMLKEM, 1088, nil),
			entry: []string{"malformed message: HELLO_R"}, exit: []string{rejected, "bad HELLO_R"}},
		badSigAtExit("alter/HELLO_I/x25519", overwrite(hiX25519, randBytes(32))),
		// Out of range, and a low-order share: the signature fails first
		// (the checks of the shares themselves are in handshake's tests).
		badSigAtExit("alter/HELLO_I/mlkem-out-of-range", overwrite(hiMLKEM, []byte{0xff, 0xff})), // a coefficient of 4095 >= q
		badSigAtEntry("alter/HELLO_R/x25519", hr, overwrite(hrX25519, randBytes(32))),
		badSigAtEntry("alter/HELLO_R/mlkem", hr, overwrite(hrMLKEM, randBytes(1088))),
		badSigAtExit("low-order/HELLO_I/x25519-zero", overwrite(hiX25519, make([]byte, 32))),
		// The signature covers the responder's share: it fails first.
		badSigAtEntry("low-order/HELLO_R/x25519-zero", hr, overwrite(hrX25519, make([]byte, 32))),
		{name: "wrong-length/HELLO_R/mlkem-ct-1087", match: hr, f: splice(hrMLKEM+1087, 1, nil),
			entry: []string{"malformed message: HELLO_R"}, exit: []string{rejected, "bad HELLO_R"}},
		{name: "wrong-length/HELLO_R/mlkem-ct-1089", match: hr, f: splice(hrMLKEM+1088, 0, []byte{0}),
			entry: []string{"malformed message: HELLO_R"}, exit: []string{rejected, "bad HELLO_R"}},

		// Trailing bytes (length adjusted).
		{name: "trailing/HELLO_I", match: hi, f: func(u *unit) []action { return splice(len(u.b), 0, []byte{0})(u) },
			entry: []string{rejected, "bad HELLO_I"}, exit: []string{"HELLO_I has 1 trailing bytes"}},
		{name: "trailing/HELLO_R", match: hr, f: func(u *unit) []action { return splice(len(u.b), 0, []byte{0})(u) },
			entry: []string{"HELLO_R has 1 trailing bytes"}, exit: []string{rejected, "bad HELLO_R"}},
		{name: "trailing/KEY_I", match: ki, f: func(u *unit) []action { return splice(len(u.b), 0, []byte{0})(u) },
			entry: []string{rejected, "bad KEY_I"}, exit: []string{"KEY_I has 1 trailing bytes"}},

		// Messages skipped or repeated.
		// The entry gives up at its handshake timeout, or sees EOF first when
		// the exit's own 2 s deadline for HELLO_I closes the connection.
		{name: "skip/HELLO_I", match: hi, f: drop, keepExitOpen: true,
			entry: []string{"waiting for HELLO_R", "timed out|EOF"}, exit: []string{"reading HELLO_I", "i/o timeout"}},
		{name: "skip/HELLO_R", match: hr, f: drop,
			entry: []string{"waiting for HELLO_R", "timed out"}, exit: []string{"waiting for KEY_I"}},
		{name: "skip/KEY_I", match: ki, f: drop,
			entry: []string{rejected, "expected KEY_I"}, exit: []string{"waiting for KEY_I", "unexpected message type 0x00"}},
		{name: "repeat/HELLO_I", match: hi, f: twice,
			entry: []string{rejected, "expected KEY_I"}, exit: []string{"waiting for KEY_I", "unexpected message type 0x01"}},
		{name: "repeat/HELLO_R", match: hr, f: twice, exitMsg: msgExitClosed,
			entry: []string{entryNoFinished, logLength}, exit: []string{peerEnded}},
		{name: "repeat/KEY_I", match: ki, f: twice,
			entry: []string{entryNoFinished}, exit: []string{exitInitFin, logLength}},
	}
}

// testHandshakes runs every handshake attack, each against its own exit,
// proxy and entry, while an application tries to use the tunnel. Every
// attack must fail the handshake (the entry never has a session), with
// both agents saying why, and the exit must never dial the backend.
func testHandshakes(t *testing.T, e *harness.Rig) {
	for _, a := range handshakeAttacks(t, e) {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			runHandshakeAttack(t, e, a)
		})
	}
}

func runHandshakeAttack(t *testing.T, e *harness.Rig, a hsAttack) {
	backend := harness.StartBackend(t, newRecorder(0).handle)
	exit := e.StartExit(t, backend.Addr(), harness.Options{Args: exitFlags})
	fired := false
	p := startProxy(t, exit.Addr, tamperAll(a.match, func(u *unit) []action {
		fired = true
		return a.f(u)
	}), a.keepExitOpen)
	entry := e.StartEntry(t, p.addr(), harness.Options{Args: hsEntryFlags})

	// An application connects and sends a request at once: were a
	// handshake accepted, the request would reach the backend.
	app, err := net.DialTimeout("tcp", entry.Addr, 5*time.Second)
	if err != nil {
		t.Fatalf("application dial: %v", err)
	}
	defer app.Close()
	app.SetDeadline(time.Now().Add(20 * time.Second))
	app.Write([]byte("POST /transfer HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"))
	appDone := make(chan error, 1)
	go func() {
		b, err := io.ReadAll(app)
		if len(b) > 0 {
			t.Errorf("application received %d bytes %q through a tunnel whose handshake was attacked", len(b), b)
		}
		appDone <- err
	}()

	l := entry.WaitMessage(t, 1, logWait, msgEntryNoSess)
	requireLine(t, "entry", l, a.entry...)
	t.Logf("entry: %s", l.Raw)

	pp := p.pipe(t, 0, time.Second)
	msg := a.exitMsg
	if msg == "" {
		msg = msgExitHSFail
	}
	xl := exit.WaitLine(t, 1, logWait, msg+" for peer "+pp.exitLocal,
		harness.All(harness.MessageIs(msg), func(l harness.Line) bool { return l.String("peer") == pp.exitLocal }))
	requireLine(t, "exit", xl, a.exit...)
	t.Logf("exit:  %s", xl.Raw)

	select {
	case err := <-appDone:
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("application connection still open after 20s")
		}
		t.Logf("application: closed without a byte (%v)", err)
	case <-time.After(25 * time.Second):
		t.Errorf("application connection not closed")
	}
	al := entry.WaitMessage(t, 1, logWait, "closing application connection: no session with the exit")
	t.Logf("entry: %s", al.Raw)

	if n := entry.Count(harness.MessageIs("session established")); n != 0 {
		t.Errorf("entry established %d sessions through the attacker", n)
	}
	if n := backend.Accepted(); n != 0 {
		t.Errorf("exit dialed the backend %d times", n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !fired {
		t.Errorf("the attack never found its target")
	}
}
