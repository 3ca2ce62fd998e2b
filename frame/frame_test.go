package frame

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memConn is a net.Conn that reads from r and records what is written.
type memConn struct {
	r      io.Reader
	w      bytes.Buffer
	closed bool
}

func (m *memConn) Read(p []byte) (int, error) {
	if m.closed {
		return 0, net.ErrClosed
	}
	return m.r.Read(p)
}
func (m *memConn) Write(p []byte) (int, error)      { return m.w.Write(p) }
func (m *memConn) Close() error                     { m.closed = true; return nil }
func (m *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (m *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (m *memConn) SetDeadline(time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(time.Time) error { return nil }

func randomKeys(t testing.TB) (a, b Keys) {
	t.Helper()
	rand.Read(a.Send[:])
	rand.Read(a.Recv[:])
	rand.Read(a.Transcript[:])
	return a, Keys{Send: a.Recv, Recv: a.Send, Transcript: a.Transcript}
}

// record is one sealed record and the plaintext it carries.
type sealed struct {
	wire []byte
	data []byte
}

// sealSession seals FINISHED, the given DATA chunks and CLOSE under k,
// returning each record separately.
func sealSession(t *testing.T, k Keys, chunks ...[]byte) []sealed {
	t.Helper()
	mc := &memConn{}
	c := New(mc, k, nil)
	var out []sealed
	take := func(data []byte) {
		out = append(out, sealed{wire: bytes.Clone(mc.w.Bytes()), data: data})
		mc.w.Reset()
	}
	if err := c.SendFinished(); err != nil {
		t.Fatal(err)
	}
	take(nil)
	for _, ch := range chunks {
		if _, err := c.Write(ch); err != nil {
			t.Fatal(err)
		}
		take(ch)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	take(nil)
	return out
}

func join(recs []sealed) []byte {
	var b []byte
	for _, r := range recs {
		b = append(b, r.wire...)
	}
	return b
}

// readAll reads c until an error and returns what it got and that error.
func readAll(c *Conn) ([]byte, error) {
	var got []byte
	buf := make([]byte, 777) // odd size: payload is served across calls
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
}

func chunks(sizes ...int) [][]byte {
	var out [][]byte
	for _, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		out = append(out, b)
	}
	return out
}

func TestSealOpenInMemory(t *testing.T) {
	a, b := randomKeys(t)
	data := chunks(1, 100, MaxPayload, MaxPayload+1, 3*MaxPayload+17)
	recs := sealSession(t, a, data...)
	r := New(&memConn{r: bytes.NewReader(join(recs))}, b, nil)
	got, err := readAll(r)
	if err != io.EOF {
		t.Fatalf("read ended with %v, want io.EOF after CLOSE", err)
	}
	if want := bytes.Join(data, nil); !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d identical bytes", len(got), len(want))
	}
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after CLOSE = %v, want sticky io.EOF", err)
	}
	if r.ReadError() != io.EOF {
		t.Fatalf("ReadError = %v, want io.EOF", r.ReadError())
	}
}

func TestWriteBuffersPacksOneRecord(t *testing.T) {
	a, _ := randomKeys(t)
	mc := &memConn{}
	c := New(mc, a, nil)
	c.SendFinished()
	before := c.Stats().RecordsSent
	hdr, body := make([]byte, 12), make([]byte, 4000)
	if n, err := c.WriteBuffers(hdr, body); err != nil || n != 4012 {
		t.Fatalf("WriteBuffers = %d, %v", n, err)
	}
	if got := c.Stats().RecordsSent - before; got != 1 {
		t.Fatalf("header+body became %d records, want 1", got)
	}
	before = c.Stats().RecordsSent
	c.WriteBuffers(hdr, make([]byte, MaxPayload))
	if got := c.Stats().RecordsSent - before; got != 2 {
		t.Fatalf("header+64KiB body became %d records, want 2", got)
	}
}

func TestTruncationIsNotEOF(t *testing.T) {
	a, b := randomKeys(t)
	recs := sealSession(t, a, []byte("complete"), []byte("cut"))
	wire := join(recs[:len(recs)-1]) // drop CLOSE
	got, err := readAll(New(&memConn{r: bytes.NewReader(wire)}, b, nil))
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("EOF without CLOSE: err = %v, want ErrTruncated", err)
	}
	if string(got) != "completecut" {
		t.Fatalf("got %q", got)
	}
	// A record cut in the middle is truncation as well, and releases nothing of it.
	wire = join(recs[:2])
	wire = append(wire, recs[2].wire[:len(recs[2].wire)-1]...)
	got, err = readAll(New(&memConn{r: bytes.NewReader(wire)}, b, nil))
	if !errors.Is(err, ErrTruncated) || string(got) != "complete" {
		t.Fatalf("cut record: got %q, %v", got, err)
	}
}

// TestTamperEveryByte flips each byte of a recorded session in turn: the
// reader must fail, and must release only bytes of records before the flip.
func TestTamperEveryByte(t *testing.T) {
	a, b := randomKeys(t)
	recs := sealSession(t, a, []byte("first record"), []byte("second"), bytes.Repeat([]byte{7}, 100))
	wire := join(recs)
	plain := []byte("first recordsecond" + string(bytes.Repeat([]byte{7}, 100)))
	for i := range wire {
		for _, mask := range []byte{0x01, 0x80} {
			mod := bytes.Clone(wire)
			mod[i] ^= mask
			got, err := readAll(New(&memConn{r: bytes.NewReader(mod)}, b, nil))
			if err == io.EOF {
				t.Fatalf("byte %d ^%#x: session read cleanly, want rejection", i, mask)
			}
			if !bytes.HasPrefix(plain, got) {
				t.Fatalf("byte %d ^%#x: released bytes that were not sent: %q", i, mask, got)
			}
		}
	}
}

func TestRejectReplayReorderDropReflect(t *testing.T) {
	a, b := randomKeys(t)
	recs := sealSession(t, a, []byte("one"), []byte("two"), []byte("three"))
	F, D1, D2, D3, C := recs[0], recs[1], recs[2], recs[3], recs[4]
	cases := []struct {
		name string
		recs []sealed
		keys Keys
		want string // data released before the failure
	}{
		{"replay", []sealed{F, D1, D1, D2, D3, C}, b, "one"},
		{"reorder", []sealed{F, D2, D1, D3, C}, b, ""},
		{"drop", []sealed{F, D1, D3, C}, b, "one"},
		{"drop FINISHED", []sealed{D1, D2, D3, C}, b, ""},
		{"reflect", recs, a, ""}, // sent back to its sender, who reads with the other key
		{"reflect FINISHED only", []sealed{F}, a, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAll(New(&memConn{r: bytes.NewReader(join(tc.recs))}, tc.keys, nil))
			if !errors.Is(err, ErrAuth) && !errors.Is(err, ErrFinished) {
				t.Fatalf("err = %v, want ErrAuth or ErrFinished", err)
			}
			if string(got) != tc.want {
				t.Fatalf("released %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWrongFinishedPayload(t *testing.T) {
	a, b := randomKeys(t)
	b.Transcript[0] ^= 1
	recs := sealSession(t, a, []byte("x"))
	_, err := readAll(New(&memConn{r: bytes.NewReader(join(recs))}, b, nil))
	if !errors.Is(err, ErrFinished) {
		t.Fatalf("err = %v, want ErrFinished", err)
	}
}

func TestLengthRejectedFromHeaderAlone(t *testing.T) {
	_, b := randomKeys(t)
	for _, length := range []uint32{0, 1, MinLength - 1, MaxLength + 1, 1 << 31, 0xFFFFFFFF} {
		hdr := binary.BigEndian.AppendUint32(nil, length)
		// The reader must decide from the 4 bytes: give it nothing more.
		r := New(&memConn{r: bytes.NewReader(hdr)}, b, nil)
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, ErrLength) {
			t.Fatalf("length %d: err = %v, want ErrLength", length, err)
		}
	}
}

func TestKeyUpdate(t *testing.T) {
	a, b := randomKeys(t)
	mc := &memConn{}
	w := New(mc, a, &Config{KeyUpdateRecords: 3})
	var want []byte
	for i := range 10 {
		msg := []byte{byte(i), 'x'}
		want = append(want, msg...)
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	w.CloseWrite()
	// FINISHED + 10 DATA + CLOSE, and a KEY_UPDATE before DATA records 3, 5, 7, 9 ...
	ws := w.Stats()
	if ws.RecordsSent < 12+3 {
		t.Fatalf("sent %d records, expected KEY_UPDATEs among them", ws.RecordsSent)
	}
	if ws.KeyUpdatesSent != ws.RecordsSent-12 {
		t.Fatalf("Stats counts %d KEY_UPDATEs sent among %d records, want %d", ws.KeyUpdatesSent, ws.RecordsSent, ws.RecordsSent-12)
	}
	r := New(&memConn{r: bytes.NewReader(mc.w.Bytes())}, b, nil)
	got, err := readAll(r)
	if err != io.EOF || !bytes.Equal(got, want) {
		t.Fatalf("got %q, %v", got, err)
	}
	if rs := r.Stats(); rs.KeyUpdatesReceived != ws.KeyUpdatesSent || rs.KeyUpdatesSent != 0 {
		t.Fatalf("reader's Stats: %d KEY_UPDATEs received, %d sent; want %d and 0", rs.KeyUpdatesReceived, rs.KeyUpdatesSent, ws.KeyUpdatesSent)
	}

	// Time-based update.
	mc = &memConn{}
	w = New(mc, a, &Config{KeyUpdateInterval: time.Nanosecond})
	w.Write([]byte("a"))
	time.Sleep(time.Millisecond)
	w.Write([]byte("b"))
	w.CloseWrite()
	if ws := w.Stats(); ws.RecordsSent != 6 || ws.KeyUpdatesSent != 2 { // FINISHED, KU, a, KU, b, CLOSE
		t.Fatalf("sent %d records, %d of them KEY_UPDATE, with a 1ns key lifetime; want 6 and 2", ws.RecordsSent, ws.KeyUpdatesSent)
	}
	got, err = readAll(New(&memConn{r: bytes.NewReader(mc.w.Bytes())}, b, nil))
	if err != io.EOF || string(got) != "ab" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// pair returns two Conns over the transport produced by dial.
func pair(t *testing.T, transport func(t *testing.T) (net.Conn, net.Conn)) (*Conn, *Conn) {
	ca, cb := transport(t)
	a, b := randomKeys(t)
	x, y := New(ca, a, nil), New(cb, b, nil)
	t.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}

func pipeTransport(t *testing.T) (net.Conn, net.Conn) { return net.Pipe() }

func tcpTransport(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	return a, b
}

var transports = map[string]func(*testing.T) (net.Conn, net.Conn){
	"pipe": pipeTransport,
	"tcp":  tcpTransport,
}

func TestRoundTrip(t *testing.T) {
	for name, tr := range transports {
		t.Run(name, func(t *testing.T) {
			x, y := pair(t, tr)
			ab := bytes.Join(chunks(5, 70000, 1, 200000), nil)
			ba := bytes.Join(chunks(3, 131072), nil)
			errc := make(chan error, 4)
			var gotAB, gotBA []byte
			done := make(chan struct{}, 2)
			go func() { gotAB, _ = readAll(y); done <- struct{}{} }()
			go func() { gotBA, _ = readAll(x); done <- struct{}{} }()
			go func() { _, err := x.Write(ab); errc <- err; errc <- x.CloseWrite() }()
			go func() { _, err := y.Write(ba); errc <- err; errc <- y.CloseWrite() }()
			for range 4 {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
			<-done
			<-done
			if !bytes.Equal(gotAB, ab) || !bytes.Equal(gotBA, ba) {
				t.Fatalf("a->b %d/%d bytes, b->a %d/%d bytes", len(gotAB), len(ab), len(gotBA), len(ba))
			}
		})
	}
}

// TestHalfClose: after one side's CloseWrite the other still writes to it.
func TestHalfCloseTCP(t *testing.T) {
	x, y := pair(t, tcpTransport)
	go func() {
		x.Write([]byte("request"))
		x.CloseWrite()
	}()
	got, err := readAll(y)
	if err != io.EOF || string(got) != "request" {
		t.Fatalf("got %q, %v", got, err)
	}
	go func() {
		y.Write([]byte("reply after the peer's CLOSE"))
		y.CloseWrite()
	}()
	got, err = readAll(x)
	if err != io.EOF || string(got) != "reply after the peer's CLOSE" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := x.Write([]byte("more")); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("write after CloseWrite = %v, want ErrWriteClosed", err)
	}
}

func TestCloseSendsCloseRecord(t *testing.T) {
	x, y := pair(t, tcpTransport)
	x.Write([]byte("bye"))
	x.Close()
	got, err := readAll(y)
	if err != io.EOF || string(got) != "bye" {
		t.Fatalf("got %q, %v; want clean EOF after Close", got, err)
	}
	if err := x.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestRSTIsNotCleanEOF(t *testing.T) {
	x, y := pair(t, tcpTransport)
	x.Write([]byte("partial"))
	time.Sleep(10 * time.Millisecond)
	tc := x.NetConn().(*net.TCPConn)
	tc.SetLinger(0)
	tc.Close()
	_, err := readAll(y)
	if err == io.EOF || err == nil {
		t.Fatalf("reset transport read as %v", err)
	}
}

func TestReadTimeoutResumes(t *testing.T) {
	x, y := pair(t, tcpTransport)
	y.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := y.Read(make([]byte, 10)); err == nil {
		t.Fatal("read with nothing sent returned no error")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("err = %v, want a timeout", err)
	}
	y.SetReadDeadline(time.Time{})
	x.Write([]byte("late"))
	buf := make([]byte, 10)
	n, err := y.Read(buf)
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("after a timeout: %q, %v", buf[:n], err)
	}
}

func TestSteadyStateAllocs(t *testing.T) {
	a, b := randomKeys(t)
	w := New(&discardConn{}, a, nil)
	p := make([]byte, 16<<10)
	w.Write(p)
	if n := testing.AllocsPerRun(100, func() { w.Write(p) }); n != 0 {
		t.Fatalf("Write allocates %v times per record", n)
	}
	hdr := make([]byte, 12)
	if n := testing.AllocsPerRun(100, func() { w.WriteBuffers(hdr, p) }); n != 0 {
		t.Fatalf("WriteBuffers allocates %v times per record", n)
	}
	large := make([]byte, 5*MaxPayload)
	if n := testing.AllocsPerRun(20, func() { w.Write(large) }); n != 0 {
		t.Fatalf("a batched Write allocates %v times", n)
	}
	src := newLoopRecord(t, a, b, p)
	buf := make([]byte, len(p))
	src.open(buf)
	if n := testing.AllocsPerRun(100, func() { src.open(buf) }); n != 0 {
		t.Fatalf("Read allocates %v times per record", n)
	}
}

// TestBatchedWrite: one large Write is sealed as batches of up to maxBatch
// records, a batch never crosses a KEY_UPDATE, and one transport Write
// carries a whole batch.
func TestBatchedWrite(t *testing.T) {
	for _, every := range []uint64{0, 1, 2, 3, 5} {
		a, b := randomKeys(t)
		cw := &countingConn{}
		w := New(cw, a, &Config{KeyUpdateRecords: every})
		if err := w.SendFinished(); err != nil {
			t.Fatal(err)
		}
		cw.writes = 0
		big := chunks(11*MaxPayload + 123)[0]
		if n, err := w.Write(big); err != nil || n != len(big) {
			t.Fatalf("every %d: Write = %d, %v", every, n, err)
		}
		data := uint64(12) // records the payload needs
		if every == 0 && (cw.writes != 3 || w.Stats().RecordsSent != 1+data) {
			t.Fatalf("%d transport writes and %d records for 12 records of payload; want 3 and 13",
				cw.writes, w.Stats().RecordsSent)
		}
		w.CloseWrite()
		got, err := readAll(New(&memConn{r: bytes.NewReader(cw.w.Bytes())}, b, nil))
		if err != io.EOF || !bytes.Equal(got, big) {
			t.Fatalf("every %d: read %d of %d bytes, %v", every, len(got), len(big), err)
		}
	}
}

// countingConn is a memConn that counts transport writes.
type countingConn struct {
	memConn
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) { c.writes++; return c.memConn.Write(p) }

// TestSequenceSpace: both ends agree on the last sequence number, 2^64-2.
// The sender seals it and then refuses; the receiver accepts it and then
// refuses, without reading another record.
func TestSequenceSpace(t *testing.T) {
	a, b := randomKeys(t)
	mc := &memConn{}
	w := New(mc, a, nil)
	if err := w.SendFinished(); err != nil {
		t.Fatal(err)
	}
	w.out.seq = math.MaxUint64 - 2
	if _, err := w.Write([]byte("last but one")); err != nil {
		t.Fatalf("seq 2^64-3: %v", err)
	}
	if _, err := w.Write([]byte("last")); err != nil {
		t.Fatalf("seq 2^64-2: %v", err)
	}
	if _, err := w.Write([]byte("one too many")); !errors.Is(err, ErrSeqExhausted) {
		t.Fatalf("seq 2^64-1: got %v, want ErrSeqExhausted", err)
	}
	wire := mc.w.Bytes()
	fin := Overhead + SecretLen
	// One more record after the last, as a sender that ignored the limit would send.
	wire = append(wire, wire[fin:fin+Overhead+len("last but one")]...)

	r := New(&memConn{r: bytes.NewReader(wire)}, b, nil)
	if err := r.ReadFinished(); err != nil {
		t.Fatal(err)
	}
	r.in.seq = math.MaxUint64 - 2
	buf := make([]byte, 64)
	for _, want := range []string{"last but one", "last"} {
		n, err := r.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("got %q, %v; want %q", buf[:n], err, want)
		}
	}
	if _, err := r.Read(buf); !errors.Is(err, ErrSeqExhausted) {
		t.Fatalf("a record past seq 2^64-2: got %v, want ErrSeqExhausted", err)
	}
}

// TestKeyUpdateWipesSecret: the traffic secret a KEY_UPDATE replaces is
// wiped, on both sides.
func TestKeyUpdateWipesSecret(t *testing.T) {
	a, b := randomKeys(t)
	mc := &memConn{}
	w := New(mc, a, &Config{KeyUpdateRecords: 1})
	old := w.out.c
	w.Write([]byte("x"))
	w.Write([]byte("y"))
	if old.secret != [SecretLen]byte{} || w.out.c.secret == [SecretLen]byte{} {
		t.Fatal("sender: the replaced secret is not wiped, or the new one is empty")
	}
	r := New(&memConn{r: bytes.NewReader(mc.w.Bytes())}, b, nil)
	old = r.in.c
	buf := make([]byte, 2)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	if old.secret != [SecretLen]byte{} {
		t.Fatal("receiver: the replaced secret is not wiped")
	}
}
