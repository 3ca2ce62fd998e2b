package mitm

// Version 2 of the handshake (handshake/PROTOCOL-v2.md) under attack. The
// agents do not speak version 2 yet, so these cases run the handshake
// package's initiator and responder in this process, on real loopback TCP
// through the proxy. Once the entry and the exit speak version 2, the same
// attacks belong in handshakeAttacks, against the binaries, with the log
// lines the agents then write.

import (
	"context"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
)

// v2Attack is an attack on a version 2 handshake; the initiator and the
// responder must fail with errors matching ini and res. fallback: the
// caller falls back to version 1 (with the fallback mark) when the first
// attempt ends in ErrUnsupportedVersion, and the errors are those of the
// second attempt.
type v2Attack struct {
	name     string
	pol      func() policy
	ini, res error
	fallback bool
}

// onConn applies f to the units of connection conn that match accepts.
func onConn(conn int, match func(*unit) bool, f func(*unit) []action) func() policy {
	return func() policy {
		return tamperAll(func(u *unit) bool { return u.conn == conn && match(u) }, f)
	}
}

func v2Attacks() []v2Attack {
	hi, hr, ki := is(i2r, kindHelloI), is(r2i, kindHelloR), is(i2r, kindKeyI)
	// insertExt adds an unknown extension to HELLO_I and fixes both lengths:
	// well formed, but not what the initiator signed.
	insertExt := func(u *unit) []action {
		b := append(append(append([]byte(nil), u.b[:hiSigLen]...), 0x42, 0, 1, 'x'), u.b[hiSigLen:]...)
		binary.BigEndian.PutUint16(b[hiExtLen:], 4)
		return forward(setMsgLen(b))
	}
	// replay: the HELLO_I of the first connection replaces that of the
	// second.
	replay := func() policy {
		var first []byte
		return func(u *unit) []action {
			if !hi(u) {
				return forward(u.b)
			}
			if u.conn == 0 {
				first = append([]byte(nil), u.b...)
				return forward(u.b)
			}
			return forward(append([]byte(nil), first...))
		}
	}
	forgedAlert := append([]byte{msgAlert, 0, 0, 9}, 2, 7, 'n', 'o', ' ', 'v', '2', '!', '!')
	return []v2Attack{
		{name: "flip/HELLO_I/time-low", pol: onConn(0, hi, flip(hiTime+7, 0)), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		{name: "flip/HELLO_I/time-high", pol: onConn(0, hi, flip(hiTime+4, 0)), ini: handshake.ErrStaleHello, res: handshake.ErrStaleHello},
		{name: "flip/HELLO_I/random", pol: onConn(0, hi, flip(hiRandom+3, 4)), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		{name: "flip/HELLO_I/mlkem-rho", pol: onConn(0, hi, flip(hiMLKEMRho+5, 0)), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		{name: "flip/HELLO_I/key_id", pol: onConn(0, hi, flip(hiKeyID, 0)), ini: handshake.ErrUnknownKey, res: handshake.ErrUnknownKey},
		{name: "flip/HELLO_I/ext_len", pol: onConn(0, hi, flip(hiExtLen+1, 0)), ini: handshake.ErrProtocol, res: handshake.ErrProtocol},
		{name: "flip/HELLO_I/sig", pol: onConn(0, hi, flip(hiSigLen+2+40, 3)), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		{name: "insert/HELLO_I/extension", pol: onConn(0, hi, insertExt), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		{name: "flip/HELLO_R/ext_len", pol: onConn(0, hr, flip(hrExtLen+1, 0)), ini: handshake.ErrProtocol, res: handshake.ErrProtocol},
		{name: "flip/HELLO_R/key_id", pol: onConn(0, hr, flip(hrKeyID, 0)), ini: handshake.ErrUnknownKey, res: handshake.ErrUnknownKey},
		{name: "flip/HELLO_R/sig", pol: onConn(0, hr, flip(hrSig+10, 5)), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		{name: "flip/KEY_I/sig", pol: onConn(0, ki, func(u *unit) []action { return flip(keyISig(u.b)+50, 7)(u) }), ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
		// The second connection's hello is the first's: refused as a replay,
		// which the initiator sees as stale_hello.
		{name: "replay/HELLO_I", pol: replay, ini: handshake.ErrStaleHello, res: handshake.ErrReplayedHello},
		// Downgrade: the attacker answers the version 2 preface with a forged
		// ALERT unsupported_version; the fallback hello carries the mark and
		// the responder, which speaks version 2, refuses it.
		{name: "downgrade/forged-ALERT-2", fallback: true, pol: onConn(0, is(i2r, kindPreface), func(u *unit) []action {
			return []action{reflectAct(append([]byte(nil), forgedAlert...)), {op: opCutFIN}}
		}), ini: handshake.ErrInappropriateFallback, res: handshake.ErrInappropriateFallback},
		// Downgrade by stripping the mark from the fallback hello: the
		// responder accepts version 1, but sig_r covers the hello it
		// received, not the one sent.
		{name: "downgrade/strip-fallback-mark", fallback: true, pol: func() policy {
			return func(u *unit) []action {
				switch {
				case u.conn == 0 && is(i2r, kindPreface)(u):
					return []action{reflectAct(append([]byte(nil), forgedAlert...)), {op: opCutFIN}}
				case u.conn == 1 && hi(u) && u.b[hiNSuites] == 2:
					return splice(hiNSuites, 3, []byte{1, 1})(u)
				}
				return forward(u.b)
			}
		}, ini: handshake.ErrBadSignature, res: handshake.ErrBadSignature},
	}
}

// TestHandshakeV2 runs every version 2 attack against a responder and an
// initiator of the handshake package. Each must fail on both sides for the
// expected reason; none may yield keys.
func TestHandshakeV2(t *testing.T) {
	var ks [2]*rsa.PrivateKey
	for i := range ks {
		k, err := handshake.GenerateKey(handshake.MinKeyBits)
		if err != nil {
			t.Fatal(err)
		}
		ks[i] = k
	}
	auth, err := handshake.NewKeySet(&ks[0].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range v2Attacks() {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			r, err := handshake.NewResponder(handshake.Config{PrivateKey: ks[1], Authorized: auth, Timeout: 10 * time.Second}, 4)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			resErrs := make(chan error, 4)
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					wg.Go(func() {
						res, err := r.Handshake(context.Background(), c)
						if res != nil {
							res.Conn.Close()
						}
						resErrs <- err
					})
				}
			})
			t.Cleanup(func() { ln.Close(); wg.Wait() })
			p := startProxy(t, ln.Addr().String(), a.pol(), false)

			initiate := func(cfg *handshake.Config) error {
				c, err := net.Dial("tcp", p.addr())
				if err != nil {
					t.Fatal(err)
				}
				res, err := handshake.Initiate(context.Background(), c, cfg)
				if res != nil {
					res.Conn.Close()
				}
				return err
			}
			cfg := &handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey, Version: handshake.Version2}
			var iniErr, resErr error
			switch {
			case a.name == "replay/HELLO_I":
				if err := initiate(cfg); err != nil {
					t.Fatalf("first connection, untouched: %v", err)
				}
				if err := <-resErrs; err != nil {
					t.Fatalf("first connection, responder: %v", err)
				}
				iniErr, resErr = initiate(cfg), <-resErrs
			case a.fallback:
				if err := initiate(cfg); !errors.Is(err, handshake.ErrUnsupportedVersion) {
					t.Fatalf("first attempt: %v, want the forged ErrUnsupportedVersion", err)
				}
				<-resErrs // the responder saw the preface cut
				iniErr = initiate(&handshake.Config{PrivateKey: ks[0], PeerKey: &ks[1].PublicKey, Version: handshake.Version1, Fallback: true})
				resErr = <-resErrs
			default:
				iniErr, resErr = initiate(cfg), <-resErrs
			}
			if !errors.Is(iniErr, a.ini) {
				t.Errorf("initiator: %v\nwant %v", iniErr, a.ini)
			}
			if !errors.Is(resErr, a.res) {
				t.Errorf("responder: %v\nwant %v", resErr, a.res)
			}
			t.Logf("initiator: %v", iniErr)
			t.Logf("responder: %v", resErr)
		})
	}
}
