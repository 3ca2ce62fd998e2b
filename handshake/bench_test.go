package handshake

import (
	"context"
	"net"
	"sync"
	"testing"
)

// BenchmarkHandshake runs whole handshakes over loopback TCP with keys of
// the default size (3072 bits): the cost of one session setup, both sides
// in this process.
func BenchmarkHandshake(b *testing.B) {
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
	cfg := &Config{PrivateKey: ik, PeerKey: &rk.PublicKey}
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
