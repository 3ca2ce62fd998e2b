package frame

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"testing"
)

// discardConn is a net.Conn that swallows writes.
type discardConn struct{ memConn }

func (*discardConn) Write(p []byte) (int, error) { return len(p), nil }

// repeatConn serves the same bytes over and over.
type repeatConn struct {
	memConn
	b   []byte
	off int
}

func (r *repeatConn) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

// loopRecord opens the same DATA record (seq 1) again and again, as a reader
// of a real stream would open one record after another.
type loopRecord struct {
	c *Conn
	n int
}

func newLoopRecord(t testing.TB, a, b Keys, payload []byte) *loopRecord {
	mc := &memConn{}
	w := New(mc, a, nil)
	w.SendFinished()
	mc.w.Reset()
	w.Write(payload)
	rec := &repeatConn{b: mc.w.Bytes()}
	r := New(rec, b, nil)
	r.in.finished = true
	return &loopRecord{c: r, n: len(payload)}
}

func (l *loopRecord) open(buf []byte) {
	l.c.in.seq = 1
	if n, err := io.ReadFull(l.c, buf[:l.n]); err != nil || n != l.n {
		panic(fmt.Sprintf("open: %d, %v", n, err))
	}
}

// benchSizes: a small record, a medium one, a full one, and a write that
// fills a whole batch of full records.
var benchSizes = []int{1 << 10, 16 << 10, 64<<10 - 1, 4*MaxPayload + 3}

func sizeName(n int) string { return fmt.Sprintf("%dKiB", (n+3)>>10) }

// BenchmarkSeal measures Write: one DATA record per call, or a batch of
// them for the largest size.
func BenchmarkSeal(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			k, _ := randomKeys(b)
			w := New(&discardConn{}, k, nil)
			p := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				w.Write(p)
			}
		})
	}
}

// BenchmarkOpen measures Read: verify, decrypt and copy out one DATA record
// (four for the largest size).
func BenchmarkOpen(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			ka, kb := randomKeys(b)
			p := make([]byte, size)
			l := newLoopRecord(b, ka, kb, p)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				l.open(p)
			}
		})
	}
}

// BenchmarkRawCFBHMAC is the floor the record layer is measured against:
// AES-256-CFB (crypto/cipher) and HMAC-SHA256 over the same bytes, with
// nothing else.
func BenchmarkRawCFBHMAC(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			key := make([]byte, 32)
			block, _ := aes.NewCipher(key)
			mac := hmac.New(sha256.New, key)
			iv := make([]byte, 16)
			p := make([]byte, size+1)
			tag := make([]byte, 0, 64)
			b.SetBytes(int64(size))
			for b.Loop() {
				//lint:ignore SA1019 the protocol mandates AES-CFB; this is the baseline it is measured against.
				cipher.NewCFBEncrypter(block, iv).XORKeyStream(p, p)
				mac.Reset()
				mac.Write(p)
				tag = mac.Sum(tag[:0])
			}
		})
	}
}

// BenchmarkLoopback moves 16 KiB writes through two Conns over loopback TCP.
func BenchmarkLoopback(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	ka, kb := randomKeys(b)
	w, r := New(raw, ka, nil), New(<-ch, kb, nil)
	defer w.Close()
	defer r.Close()
	const size = 16 << 10
	p := make([]byte, size)
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(io.Discard, r)
	}()
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Write(p); err != nil {
			b.Fatal(err)
		}
	}
	w.CloseWrite()
	<-done
}

// BenchmarkCFBEncrypt compares encrypting maxBatch full records one after
// another with encrypting them interleaved, as a batched Write does.
func BenchmarkCFBEncrypt(b *testing.B) {
	rc := newRecordCipher([32]byte{1})
	regions := make([][]byte, maxBatch)
	for i := range regions {
		regions[i] = make([]byte, ivLen+maxPlain)
	}
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(int64(maxBatch * maxPlain))
		for b.Loop() {
			for i := range regions {
				rc.cfbEncrypt(regions[i : i+1])
			}
		}
	})
	b.Run("interleaved", func(b *testing.B) {
		b.SetBytes(int64(maxBatch * maxPlain))
		for b.Loop() {
			rc.cfbEncrypt(regions)
		}
	})
}

// BenchmarkCFBDecrypt measures decryption of one full record, keystream
// computed decryptBatch blocks at a time.
func BenchmarkCFBDecrypt(b *testing.B) {
	rc := newRecordCipher([32]byte{1})
	region := make([]byte, ivLen+maxPlain)
	b.SetBytes(maxPlain)
	for b.Loop() {
		rc.cfbDecrypt(region)
	}
}
