package frame

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"io"
	"math/rand/v2"
	"testing"
)

// fuzzKeys are fixed so that the corpus stays meaningful across runs.
var fuzzKeys = Keys{Send: [32]byte{1}, Recv: [32]byte{2}, Transcript: [32]byte{3}}

// fuzzSession seals a short session with fixed IVs: fuzz workers are
// separate processes and must all derive the same seed.
func fuzzSession() (wire, plain []byte) {
	msgs := [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte("x"), 300), {0}}
	mc := &memConn{}
	ivs := bytes.NewReader(bytes.Repeat([]byte{0x5a}, 16*8))
	c := New(mc, Keys{Send: fuzzKeys.Recv, Recv: fuzzKeys.Send, Transcript: fuzzKeys.Transcript}, nil)
	c.out.iv.r = ivs
	for _, m := range msgs {
		c.Write(m)
	}
	c.CloseWrite()
	return mc.w.Bytes(), bytes.Join(msgs, nil)
}

// FuzzReader feeds arbitrary bytes to a reader expecting fuzzSession's keys.
// Invariants: no panic; every byte released is a byte the sender sealed, in
// order; a clean end (io.EOF) only when the input begins with the session.
func FuzzReader(f *testing.F) {
	wire, plain := fuzzSession()
	f.Add(wire)
	f.Add(wire[:len(wire)-1])
	f.Add(append(bytes.Clone(wire), 0, 0, 0, 49))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readAll(New(&memConn{r: bytes.NewReader(in)}, fuzzKeys, nil))
		if !bytes.HasPrefix(plain, got) {
			t.Fatalf("released bytes never sent: %q", got)
		}
		if err == io.EOF && !bytes.HasPrefix(in, wire) {
			t.Fatalf("modified session read to a clean end")
		}
		if err == nil {
			t.Fatal("readAll ended without an error")
		}
	})
}

// TestCFBMatchesStdlib: the record layer's CFB is Go's CFB-128, whether a
// record is encrypted alone or interleaved with up to maxBatch-1 others of
// other lengths, decrypted in place or into another buffer, and its scratch
// is wiped afterwards.
func TestCFBMatchesStdlib(t *testing.T) {
	rc := newRecordCipher([32]byte{9})
	enc, _ := DeriveRecordKeys([32]byte{9})
	block, _ := aes.NewCipher(enc[:])
	sizes := []int{0, 1, 15, 16, 17, 31, 32, 33, 127, 128, 129, 1000, maxPlain}
	for batch := 1; batch <= maxBatch; batch++ {
		for first := range sizes {
			regions := make([][]byte, batch)
			srcs := make([][]byte, batch)
			for i := range regions {
				n := sizes[(first+i*5)%len(sizes)]
				r := make([]byte, 16+n)
				for j := range r {
					r[j] = byte(rand.IntN(256))
				}
				regions[i], srcs[i] = r, bytes.Clone(r)
			}
			rc.cfbEncrypt(regions)
			for i, r := range regions {
				src := srcs[i]
				want := make([]byte, len(src)-16)
				//lint:ignore SA1019 checking the protocol's AES-CFB against the standard library's.
				cipher.NewCFBEncrypter(block, src[:16]).XORKeyStream(want, src[16:])
				if !bytes.Equal(r[:16], src[:16]) || !bytes.Equal(r[16:], want) {
					t.Fatalf("batch of %d, record %d (%d bytes): encryption differs from crypto/cipher", batch, i, len(want))
				}
				if len(want) >= aes.BlockSize {
					enciphered := bytes.Clone(r)
					rest := make([]byte, len(want)-1)
					if typ := rc.cfbDecryptSplit(rest, r); typ != src[16] || !bytes.Equal(rest, src[17:]) || !bytes.Equal(r, enciphered) {
						t.Fatalf("batch of %d, record %d (%d bytes): decryption into a buffer differs, or changed the record", batch, i, len(want))
					}
				}
				rc.cfbDecrypt(r)
				if !bytes.Equal(r, src) {
					t.Fatalf("batch of %d, record %d (%d bytes): decryption does not invert encryption", batch, i, len(want))
				}
			}
			if rc.ks != [len(rc.ks)]byte{} || rc.prev != [16]byte{} {
				t.Fatal("CFB scratch not wiped after use")
			}
		}
	}
}

// fuzzAckSession is fuzzSession with ACKs between the DATA records, on a
// connection that negotiated them.
func fuzzAckSession() (wire, plain []byte, acks []ack) {
	mc := &memConn{}
	c := New(mc, Keys{Send: fuzzKeys.Recv, Recv: fuzzKeys.Send, Transcript: fuzzKeys.Transcript}, &Config{Acks: true})
	c.out.iv.r = bytes.NewReader(bytes.Repeat([]byte{0x5a}, 16*8))
	acks = []ack{{0, true}, {18, false}, {1 << 40, true}}
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	c.WriteAck(acks[0].received, acks[0].reply)
	c.WriteAck(acks[1].received, acks[1].reply)
	c.Write([]byte("body"))
	c.WriteAck(acks[2].received, acks[2].reply)
	c.CloseWrite()
	return mc.w.Bytes(), []byte("GET / HTTP/1.1\r\n\r\nbody"), acks
}

// FuzzReaderAcks: as FuzzReader, on a connection with ACKs. Invariants
// besides FuzzReader's: OnAck sees only ACKs the sender sent, in order.
func FuzzReaderAcks(f *testing.F) {
	wire, plain, acks := fuzzAckSession()
	f.Add(wire)
	f.Add(wire[:len(wire)-1])
	f.Fuzz(func(t *testing.T, in []byte) {
		var rec ackRecorder
		got, err := readAll(New(&memConn{r: bytes.NewReader(in)}, fuzzKeys, &Config{Acks: true, OnAck: rec.onAck}))
		if !bytes.HasPrefix(plain, got) {
			t.Fatalf("released bytes never sent: %q", got)
		}
		seen := rec.got()
		if len(seen) > len(acks) {
			t.Fatalf("%d ACKs seen, %d sent", len(seen), len(acks))
		}
		for i, a := range seen {
			if a != acks[i] {
				t.Fatalf("ACK %d seen as %+v, sent %+v", i, a, acks[i])
			}
		}
		if err == io.EOF && (!bytes.HasPrefix(in, wire) || len(seen) != len(acks)) {
			t.Fatalf("modified session read to a clean end")
		}
		if err == nil {
			t.Fatal("readAll ended without an error")
		}
	})
}
