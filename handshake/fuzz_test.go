package handshake

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/mlkem"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
	"time"
	"unicode"
)

// fuzzVector loads the shared handshake vector for seeding; fuzz workers
// are separate processes, so it is read from testdata rather than generated.
func fuzzVector(f *testing.F) (v handshakeVector, m1, m2, m3 []byte) {
	raw, err := os.ReadFile("testdata/handshake.json")
	if err != nil {
		f.Fatal(err)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		f.Fatal(err)
	}
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	return v, h(v.Msg1), h(v.Msg2), h(v.Msg3)
}

// roundTrip: whatever parses re-encodes to the same bytes (strict parsing
// leaves no slack for a modified message to mean the same thing).
func FuzzParseHelloI(f *testing.F) {
	_, m1, _, _ := fuzzVector(f)
	f.Add(m1[prefaceLen+msgHeaderLen:])
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := parseHelloI(body)
		if err == nil && !bytes.Equal(m.body(), body) {
			t.Fatalf("HELLO_I parsed but re-encodes differently")
		}
	})
}

func FuzzParseAlert(f *testing.F) {
	f.Add((&alert{code: AlertUnknownKey, reason: "key SHA256:x is not authorized"}).body())
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := parseAlert(body)
		if err != nil {
			return
		}
		if len(body) != 2+int(body[1]) || m.code != AlertCode(body[0]) {
			t.Fatalf("ALERT parsed with the wrong shape")
		}
		for _, r := range m.reason {
			if !unicode.IsGraphic(r) {
				t.Fatalf("character %q, neither graphic nor a space, survived into the reason", r)
			}
		}
	})
}

// FuzzHelloR: the initiator of the vector accepts exactly the vector's
// HELLO_R and nothing else.
func FuzzHelloR(f *testing.F) {
	v, m1, m2, _ := fuzzVector(f)
	iPriv, _ := ParsePrivateKeyPEM([]byte(v.InitiatorPrivateKeyPEM))
	rPub, _ := ParsePublicKeyPEM([]byte(v.ResponderPublicKeyPEM))
	xb, _ := hex.DecodeString(v.InitiatorX25519)
	seed, _ := hex.DecodeString(v.InitiatorMLKEMSeed)
	x, _ := ecdh.X25519().NewPrivateKey(xb)
	dk, _ := mlkem.NewDecapsulationKey768(seed)
	f.Add(m2)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) < msgHeaderLen {
			return
		}
		ini := &initiator{cfg: &Config{PrivateKey: iPriv, PeerKey: rPub}, m1: m1, x25519: x, mlkem: dk}
		err := ini.handleHelloR(msg)
		if err == nil && !bytes.Equal(msg[msgHeaderLen:], m2[msgHeaderLen:]) {
			t.Fatalf("modified HELLO_R accepted")
		}
	})
}

// FuzzKeyI: the responder of the vector accepts exactly the vector's KEY_I.
func FuzzKeyI(f *testing.F) {
	v, m1, m2, m3 := fuzzVector(f)
	rPriv, _ := ParsePrivateKeyPEM([]byte(v.ResponderPrivateKeyPEM))
	iPub, _ := ParsePublicKeyPEM([]byte(v.InitiatorPublicKeyPEM))
	f.Add(m3)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) < msgHeaderLen {
			return
		}
		res := &responder{cfg: &Config{PrivateKey: rPriv}, peerKey: iPub, m1: m1, m2: m2}
		_, err := res.handleKeyI(context.Background(), msg)
		if err == nil && !bytes.Equal(msg[msgHeaderLen:], m3[msgHeaderLen:]) {
			t.Fatalf("modified KEY_I accepted")
		}
	})
}

// fuzzVectorV2 loads the version 2 vector for seeding.
func fuzzVectorV2(f *testing.F) (v *v2Vector, m1, m2, m3 []byte) {
	v = loadV2Vector(f)
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	return v, h(v.Msg1), h(v.Msg2), h(v.Msg3)
}

func FuzzParseHelloI2(f *testing.F) {
	_, m1, _, _ := fuzzVectorV2(f)
	f.Add(m1[prefaceLen+msgHeaderLen:])
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := parseHelloI2(body)
		if err == nil && !bytes.Equal(m.body(), body) {
			t.Fatalf("version 2 HELLO_I parsed but re-encodes differently")
		}
	})
}

func FuzzParseHelloR2(f *testing.F) {
	_, _, m2, _ := fuzzVectorV2(f)
	f.Add(m2[msgHeaderLen:])
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := parseHelloR2(body)
		if err == nil && !bytes.Equal(m.body(), body) {
			t.Fatalf("version 2 HELLO_R parsed but re-encodes differently")
		}
	})
}

// FuzzParseExtensions: a block that parses re-encodes to itself, and has no
// type twice.
func FuzzParseExtensions(f *testing.F) {
	f.Add(appendExtensions(nil, extension{typ: extResumption, val: []byte("ticket")}, extension{typ: 0x42}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, block []byte) {
		exts, err := parseExtensions(block)
		if err != nil {
			return
		}
		if !bytes.Equal(appendExtensions(nil, exts...), block) {
			t.Fatalf("extension block parsed but re-encodes differently")
		}
		seen := map[byte]bool{}
		for _, e := range exts {
			if seen[e.typ] {
				t.Fatalf("extension %#02x accepted twice", e.typ)
			}
			seen[e.typ] = true
		}
	})
}

// FuzzHelloI2: the responder of the vector, at the vector's time, accepts
// exactly the vector's HELLO_I (preface and header included) and nothing
// else.
func FuzzHelloI2(f *testing.F) {
	v, m1, _, _ := fuzzVectorV2(f)
	iPriv, _ := ParsePrivateKeyPEM([]byte(v.InitiatorPrivateKeyPEM))
	rPriv, _ := ParsePrivateKeyPEM([]byte(v.ResponderPrivateKeyPEM))
	auth, _ := NewKeySet(&iPriv.PublicKey)
	cfg := &Config{PrivateKey: rPriv, Authorized: auth, Now: func() time.Time { return time.Unix(int64(v.Time), 0) }}
	f.Add(m1)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) < prefaceLen+msgHeaderLen {
			return
		}
		res := &responder{cfg: cfg, version: Version2, m1: msg}
		_, err := res.checkHelloI2(msg[prefaceLen:])
		if err == nil && !bytes.Equal(msg, m1) {
			t.Fatalf("modified version 2 HELLO_I accepted")
		}
	})
}

// FuzzHelloR2: the initiator of the vector accepts exactly the vector's
// HELLO_R body.
func FuzzHelloR2(f *testing.F) {
	v, m1, m2, _ := fuzzVectorV2(f)
	iPriv, _ := ParsePrivateKeyPEM([]byte(v.InitiatorPrivateKeyPEM))
	rPub, _ := ParsePublicKeyPEM([]byte(v.ResponderPublicKeyPEM))
	xb, _ := hex.DecodeString(v.InitiatorX25519)
	seed, _ := hex.DecodeString(v.InitiatorMLKEMSeed)
	x, _ := ecdh.X25519().NewPrivateKey(xb)
	dk, _ := mlkem.NewDecapsulationKey768(seed)
	f.Add(m2)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) < msgHeaderLen {
			return
		}
		ini := &initiator{cfg: &Config{PrivateKey: iPriv, PeerKey: rPub}, version: Version2, m1: m1, x25519: x, mlkem: dk}
		err := ini.handleHelloR(msg)
		if err == nil && !bytes.Equal(msg[msgHeaderLen:], m2[msgHeaderLen:]) {
			t.Fatalf("modified version 2 HELLO_R accepted")
		}
	})
}

// fuzzResume loads the resumption vector's messages and keys for seeding.
func fuzzResume(f *testing.F) (v *resumeVector, r1, r2, r3 []byte) {
	v = loadResumeVector(f)
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	return v, h(v.ResumeMsg1), h(v.ResumeMsg2), h(v.ResumeMsg3)
}

// FuzzParseResume: whatever parses as RESUME_I, RESUME_R or RESUME_F, or
// as HELLO_R's resumption extension, re-encodes to the same bytes.
func FuzzParseResume(f *testing.F) {
	_, r1, r2, r3 := fuzzResume(f)
	f.Add(byte(0), r1[prefaceLen+msgHeaderLen:])
	f.Add(byte(1), r2[msgHeaderLen:])
	f.Add(byte(2), r3[msgHeaderLen:])
	f.Add(byte(3), (&resumptionAccept{id: [SessionIDLen]byte{1}, window: 60}).value())
	f.Fuzz(func(t *testing.T, which byte, body []byte) {
		var enc []byte
		switch which % 4 {
		case 0:
			m, err := parseResumeI(body)
			if err != nil {
				return
			}
			enc = m.msg(nil)[msgHeaderLen:]
		case 1:
			m, err := parseResumeR(body)
			if err != nil {
				return
			}
			enc = m.msg()[msgHeaderLen:]
		case 2:
			m, err := parseResumeF(body)
			if err != nil {
				return
			}
			enc = m.msg()[msgHeaderLen:]
		case 3:
			a, err := parseResumptionAccept(body)
			if err != nil {
				return
			}
			if a.window == 0 {
				t.Fatal("window 0 accepted")
			}
			enc = a.value()
		}
		if !bytes.Equal(enc, body) {
			t.Fatalf("message %d parsed but re-encodes differently", which%4)
		}
	})
}

// FuzzResumeI: the responder of the vector, whose store holds the
// vector's session, accepts exactly the vector's preface || RESUME_I.
func FuzzResumeI(f *testing.F) {
	v, r1, _, _ := fuzzResume(f)
	f.Add(r1)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) < prefaceLen+msgHeaderLen {
			return
		}
		_, res := resumeSides(t, v)
		res.m1 = msg
		_, err := res.checkResumeI(msg)
		if err == nil && !bytes.Equal(msg, r1) {
			t.Fatalf("modified RESUME_I accepted")
		}
	})
}

// FuzzResumeRF: the initiator of the vector accepts exactly the vector's
// RESUME_R, and the responder exactly its RESUME_F.
func FuzzResumeRF(f *testing.F) {
	v, r1, r2, r3 := fuzzResume(f)
	f.Add(false, r2)
	f.Add(true, r3)
	f.Fuzz(func(t *testing.T, final bool, msg []byte) {
		if len(msg) < msgHeaderLen {
			return
		}
		st, res := resumeSides(t, v)
		if !final {
			st.m1 = r1
			if err := st.handleResumeR(msg); err == nil && !bytes.Equal(msg, r2) {
				t.Fatalf("modified RESUME_R accepted")
			}
			return
		}
		res.m1 = r1
		if _, err := res.checkResumeI(r1); err != nil {
			t.Fatal(err)
		}
		res.m2 = r2
		if err := res.checkResumeF(msg); err == nil && !bytes.Equal(msg[msgHeaderLen:], r3[msgHeaderLen:]) {
			t.Fatalf("modified RESUME_F accepted")
		}
	})
}
