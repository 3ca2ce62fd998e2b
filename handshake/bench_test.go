package handshake

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
)

// BenchmarkHandshake runs whole version 1 handshakes over loopback TCP
// with keys of the default size (3072 bits): the cost of one session
// setup, both sides in this process.
func BenchmarkHandshake(b *testing.B) { benchHandshake(b, Version1) }

// BenchmarkHandshakeV2 is BenchmarkHandshake in version 2: one RSA
// signature (sig_h) and one verification more.
func BenchmarkHandshakeV2(b *testing.B) { benchHandshake(b, Version2) }

func benchHandshake(b *testing.B, version int) {
	ik, err := GenerateKey(DefaultKeyBits)
	if err != nil {
		b.Fatal(err)
	}
	rk, err := GenerateKey(DefaultKeyBits)
	if err != nil {
		b.Fatal(err)
	}
	r, err := NewResponder(Config{PrivateKey: rk, Authorized: mustKeySet(b, &ik.PublicKey)}, 4)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() { ln.Close(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if res, err := r.Handshake(context.Background(), c); err == nil {
				res.Conn.Close()
			}
		}
	}()
	cfg := &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: version}
	for b.Loop() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		res, err := Initiate(context.Background(), c, cfg)
		if err != nil {
			b.Fatal(err)
		}
		res.Conn.Close()
	}
}

// BenchmarkRefuseForgedHelloV2: what a version 2 hello naming an
// authorized key, signed by another, costs the responder from the parsed
// message to the refusal (3072-bit keys): one RSA verification, no
// private-key operation.
func BenchmarkRefuseForgedHelloV2(b *testing.B) {
	ik, err := GenerateKey(DefaultKeyBits)
	if err != nil {
		b.Fatal(err)
	}
	forger, err := GenerateKey(DefaultKeyBits)
	if err != nil {
		b.Fatal(err)
	}
	st, err := newInitiator(&Config{PrivateKey: ik, Version: Version2})
	if err != nil {
		b.Fatal(err)
	}
	m1, err := st.hello()
	if err != nil {
		b.Fatal(err)
	}
	hi, _ := parseHelloI2(m1[prefaceLen+msgHeaderLen:])
	if hi.sig, err = sign(forger, contextHello2, digest(hi.signedMsg(prefaceV2[:], forger.Size()))); err != nil {
		b.Fatal(err)
	}
	m1 = appendMsg(prefaceV2[:], msgHelloI, hi.body())
	cfg := &Config{PrivateKey: forger, Authorized: mustKeySet(b, &ik.PublicKey)}
	adm := newAdmission(DefaultMaxInProgress)
	for b.Loop() {
		res := &responder{cfg: cfg, adm: adm, version: Version2, m1: m1}
		if _, err := res.checkHelloI2(m1[prefaceLen:]); !errors.Is(err, ErrBadSignature) {
			b.Fatalf("forged hello: %v", err)
		}
	}
	if adm.privateOps.Load() != 0 || adm.slotsTaken.Load() != 0 {
		b.Fatal("a forged hello cost a private-key operation or a slot")
	}
}

// BenchmarkSignV2: one RSA-PSS signature with a 3072-bit key, what a
// responder spends on HELLO_R, for comparison with the refusal above.
func BenchmarkSignV2(b *testing.B) {
	k, err := GenerateKey(DefaultKeyBits)
	if err != nil {
		b.Fatal(err)
	}
	d := digest([]byte("m1"))
	for b.Loop() {
		if _, err := sign(k, contextResponder2, d); err != nil {
			b.Fatal(err)
		}
	}
}
