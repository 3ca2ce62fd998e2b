package frame

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"testing"
)

// ack is one ACK as OnAck saw it.
type ack struct {
	received uint64
	reply    bool
}

// ackRecorder collects what OnAck is called with.
type ackRecorder struct {
	mu   sync.Mutex
	acks []ack
}

func (r *ackRecorder) onAck(received uint64, reply bool) {
	r.mu.Lock()
	r.acks = append(r.acks, ack{received, reply})
	r.mu.Unlock()
}

func (r *ackRecorder) got() []ack {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ack(nil), r.acks...)
}

// sealRaw seals one record of any type and payload, bypassing the checks
// of the public API, and returns its bytes on the wire.
func sealRaw(c *Conn, mc *memConn, typ byte, payload []byte) []byte {
	start := mc.w.Len()
	c.out.mu.Lock()
	copy(c.out.payloadArea(), payload)
	err := c.out.seal(typ, len(payload))
	c.out.mu.Unlock()
	if err != nil {
		panic(err)
	}
	return bytes.Clone(mc.w.Bytes()[start:])
}

// TestAckRoundTrip: ACKs interleaved with DATA reach OnAck in order, with
// their flags, and take nothing from the byte stream Read serves.
func TestAckRoundTrip(t *testing.T) {
	a, b := randomKeys(t)
	mc := &memConn{}
	w := New(mc, a, &Config{Acks: true})
	want := []ack{{0, true}, {5, false}, {math.MaxUint64, true}}
	w.Write([]byte("one"))
	for _, k := range want {
		if err := w.WriteAck(k.received, k.reply); err != nil {
			t.Fatal(err)
		}
	}
	w.Write([]byte("two"))
	w.CloseWrite()

	var rec ackRecorder
	r := New(&memConn{r: bytes.NewReader(mc.w.Bytes())}, b, &Config{Acks: true, OnAck: rec.onAck})
	got, err := readAll(r)
	if err != io.EOF || string(got) != "onetwo" {
		t.Fatalf("read %q, %v; want \"onetwo\", io.EOF", got, err)
	}
	if g := rec.got(); len(g) != len(want) || g[0] != want[0] || g[1] != want[1] || g[2] != want[2] {
		t.Fatalf("OnAck saw %v, want %v", g, want)
	}

	// SetOnAck replaces the callback; a nil one drops ACKs after checking them.
	var other ackRecorder
	r = New(&memConn{r: bytes.NewReader(mc.w.Bytes())}, b, &Config{Acks: true, OnAck: rec.onAck})
	r.SetOnAck(other.onAck)
	if got, err := readAll(r); err != io.EOF || string(got) != "onetwo" || len(other.got()) != len(want) {
		t.Fatalf("after SetOnAck: %q, %v, %d ACKs", got, err, len(other.got()))
	}
	r = New(&memConn{r: bytes.NewReader(mc.w.Bytes())}, b, &Config{Acks: true})
	if got, err := readAll(r); err != io.EOF || string(got) != "onetwo" {
		t.Fatalf("without OnAck: %q, %v", got, err)
	}
}

// TestAckNotNegotiated: without Config.Acks an ACK is an unknown record
// type: the reader fails with ErrProtocol and closes, and WriteAck sends
// nothing.
func TestAckNotNegotiated(t *testing.T) {
	a, b := randomKeys(t)
	mc := &memConn{}
	w := New(mc, a, &Config{Acks: true})
	w.Write([]byte("x"))
	w.WriteAck(1, false)
	w.Write([]byte("y"))
	called := false
	rc := &memConn{r: bytes.NewReader(mc.w.Bytes())}
	r := New(rc, b, &Config{OnAck: func(uint64, bool) { called = true }})
	got, err := readAll(r)
	if !errors.Is(err, ErrProtocol) || string(got) != "x" || !rc.closed || called {
		t.Fatalf("read %q, %v, closed %v, OnAck called %v; want \"x\", ErrProtocol, closed, not called", got, err, rc.closed, called)
	}

	mc = &memConn{}
	w = New(mc, a, nil)
	if err := w.WriteAck(1, true); !errors.Is(err, ErrNoAcks) || mc.w.Len() != 0 {
		t.Fatalf("WriteAck without Acks: %v, %d bytes written; want ErrNoAcks and nothing", err, mc.w.Len())
	}
	if _, err := w.Write([]byte("still usable")); err != nil {
		t.Fatalf("Write after a refused WriteAck: %v", err)
	}
	w.CloseWrite()
	if err := (&Conn{out: outHalf{cfg: Config{Acks: true}, closed: true}}).out.sendAck(1, false); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("WriteAck after CLOSE: %v, want ErrWriteClosed", err)
	}
}

// TestAckStrict: an ACK whose payload is not exactly 9 bytes, or that sets
// a flag other than bit 0, closes the connection; nothing after it is
// released and OnAck is not called.
func TestAckStrict(t *testing.T) {
	a, b := randomKeys(t)
	for name, payload := range map[string][]byte{
		"empty":       {},
		"8 bytes":     make([]byte, 8),
		"10 bytes":    make([]byte, 10),
		"flag 0x02":   {0, 0, 0, 0, 0, 0, 0, 1, 0x02},
		"flag 0x80":   {0, 0, 0, 0, 0, 0, 0, 1, 0x80},
		"flags 0xff":  {0, 0, 0, 0, 0, 0, 0, 1, 0xff},
		"65535 bytes": make([]byte, MaxPayload),
	} {
		t.Run(name, func(t *testing.T) {
			mc := &memConn{}
			w := New(mc, a, &Config{Acks: true})
			w.Write([]byte("before"))
			sealRaw(w, mc, typeAck, payload)
			w.Write([]byte("after"))
			var rec ackRecorder
			rc := &memConn{r: bytes.NewReader(mc.w.Bytes())}
			got, err := readAll(New(rc, b, &Config{Acks: true, OnAck: rec.onAck}))
			if !errors.Is(err, ErrProtocol) || string(got) != "before" || !rc.closed || len(rec.got()) != 0 {
				t.Fatalf("read %q, %v, closed %v, %d ACKs; want \"before\", ErrProtocol, closed, none", got, err, rc.closed, len(rec.got()))
			}
		})
	}
}

// TestAckConcurrent: over loopback TCP, one goroutine Writes while another
// sends ACKs, and the reading side answers every reply-requested ACK from
// OnAck (as a keepalive does). The byte stream arrives whole, every ACK
// arrives in order, and every probe gets its answer.
func TestAckConcurrent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ka, kb := randomKeys(t)
	var answers ackRecorder
	w := New(raw, ka, &Config{Acks: true, OnAck: answers.onAck})
	var r *Conn
	var seen ackRecorder
	r = New(<-ch, kb, &Config{Acks: true, OnAck: func(received uint64, reply bool) {
		seen.onAck(received, reply)
		if reply {
			if err := r.WriteAck(received+1, false); err != nil {
				t.Error(err)
			}
		}
	}})
	defer w.Close()
	defer r.Close()

	const writes, acks = 200, 300
	data := chunks(writes * 1000)[0]
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range writes {
			if _, err := w.Write(data[i*1000 : (i+1)*1000]); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := range acks {
			if err := w.WriteAck(uint64(i), i%3 == 0); err != nil {
				t.Error(err)
				return
			}
		}
	})
	// The writer's side reads the answers until the reader closes.
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, w); done <- err }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	w.CloseWrite()
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatalf("reader after CLOSE: %v", err)
	}
	r.CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("writer reading the answers: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data corrupted while ACKs were interleaved")
	}
	s := seen.got()
	if len(s) != acks {
		t.Fatalf("%d ACKs seen, want %d", len(s), acks)
	}
	probes := 0
	for i, a := range s {
		if a.received != uint64(i) || a.reply != (i%3 == 0) {
			t.Fatalf("ACK %d seen as %+v", i, a)
		}
		if a.reply {
			probes++
		}
	}
	if n := len(answers.got()); n != probes {
		t.Fatalf("%d answers to %d probes", n, probes)
	}
}

var updateAcks = flag.Bool("update-acks", false, "rewrite testdata/acks.json from the code")

const acksPath = "testdata/acks.json"

// ackVectors mirrors testdata/acks.json: ACK records under the keys of
// records.json (traffic secret s0, transcript hash = its FINISHED payload).
type ackVectors struct {
	Description string      `json:"description"`
	S0          string      `json:"s0"`
	Transcript  string      `json:"transcript"`
	Records     []ackVector `json:"records"`
}

type ackVector struct {
	Comment  string `json:"comment"`
	Seq      uint64 `json:"seq"`
	IV       string `json:"iv"`
	Type     byte   `json:"type"`
	Payload  string `json:"payload"`
	Record   string `json:"record"`
	Valid    bool   `json:"valid"`
	Received uint64 `json:"received,omitempty"`
	Reply    bool   `json:"reply,omitempty"`
}

// makeAckVectors seals, with fixed IVs: FINISHED, two valid ACKs, and
// three malformed ones at seq 1, each meant to be read after FINISHED.
func makeAckVectors(t *testing.T) *ackVectors {
	v := loadRecordVectors(t)
	var th []byte
	for _, r := range v.Records {
		if r.Type == typeFinished && r.Valid {
			th = r.payload(t)
		}
	}
	out := &ackVectors{
		Description: "ACK records (PROTOCOL-v2.md section 6.2) under k0 of records.json (traffic secret s0, FINISHED carrying transcript). " +
			"Each record with seq > 0 follows the FINISHED record of seq 0 on a connection whose handshake negotiated resumption. " +
			"Valid ones carry received and reply; invalid ones (payload not 9 bytes, unknown flag bits) must close the connection. " +
			"A receiver on a connection that did not negotiate resumption must refuse every ACK as an unknown record type.",
		S0: v.S0, Transcript: hex.EncodeToString(th),
	}
	add := func(comment string, seq uint64, ivByte byte, typ byte, payload []byte, valid bool, received uint64, reply bool) {
		mc := &memConn{}
		c := New(mc, Keys{Send: secret(t, v.S0), Transcript: [32]byte(th)}, &Config{Acks: true})
		c.out.seq = seq
		c.out.finishedSent = seq > 0
		c.out.iv.r = bytes.NewReader(bytes.Repeat([]byte{ivByte}, ivLen))
		rec := sealRaw(c, mc, typ, payload)
		out.Records = append(out.Records, ackVector{
			Comment: comment, Seq: seq, IV: hex.EncodeToString(bytes.Repeat([]byte{ivByte}, ivLen)), Type: typ,
			Payload: hex.EncodeToString(payload), Record: hex.EncodeToString(rec), Valid: valid, Received: received, Reply: reply,
		})
	}
	add("FINISHED, first record of a direction", 0, 0x21, typeFinished, th, true, 0, false)
	add("ACK received=0, no flags", 1, 0x22, typeAck, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0}, true, 0, false)
	add("ACK received=0x0102030405060708, reply requested", 2, 0x23, typeAck, []byte{1, 2, 3, 4, 5, 6, 7, 8, 1}, true, 0x0102030405060708, true)
	add("ACK with 8 bytes of payload", 1, 0x24, typeAck, []byte{0, 0, 0, 0, 0, 0, 0, 9}, false, 0, false)
	add("ACK with 10 bytes of payload", 1, 0x25, typeAck, []byte{0, 0, 0, 0, 0, 0, 0, 9, 0, 0}, false, 0, false)
	add("ACK with flag bit 1 set (unknown)", 1, 0x26, typeAck, []byte{0, 0, 0, 0, 0, 0, 0, 9, 2}, false, 0, false)
	return out
}

// TestAckVectors: the code seals testdata/acks.json byte for byte (with
// -update-acks it rewrites it), reads the valid records in order, refuses
// each invalid one after FINISHED, and refuses the first ACK without Acks.
func TestAckVectors(t *testing.T) {
	got := makeAckVectors(t)
	gj, _ := json.MarshalIndent(got, "", "  ")
	if *updateAcks {
		if err := os.WriteFile(acksPath, append(gj, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := os.ReadFile(acksPath)
	if err != nil {
		t.Fatal(err)
	}
	var want ackVectors
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if wj, _ := json.MarshalIndent(&want, "", "  "); !bytes.Equal(gj, wj) {
		t.Fatalf("the code no longer makes %s:\n got %s\nwant %s", acksPath, gj, wj)
	}
	keys := Keys{Recv: secret(t, want.S0), Transcript: [32]byte(unhex(t, want.Transcript))}
	finished := unhex(t, want.Records[0].Record)
	var stream []byte
	var wantAcks []ack
	for _, r := range want.Records {
		if r.Valid {
			stream = append(stream, unhex(t, r.Record)...)
			if r.Type == typeAck {
				wantAcks = append(wantAcks, ack{r.Received, r.Reply})
			}
		}
	}
	var rec ackRecorder
	if _, err := readAll(New(&memConn{r: bytes.NewReader(stream)}, keys, &Config{Acks: true, OnAck: rec.onAck})); !errors.Is(err, ErrTruncated) {
		t.Fatalf("valid records: %v, want ErrTruncated at their end", err)
	}
	if g := rec.got(); len(g) != len(wantAcks) || g[0] != wantAcks[0] || g[1] != wantAcks[1] {
		t.Fatalf("OnAck saw %v, want %v", g, wantAcks)
	}
	if _, err := readAll(New(&memConn{r: bytes.NewReader(stream)}, keys, nil)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("valid records without Acks: %v, want ErrProtocol", err)
	}
	for _, r := range want.Records {
		if r.Valid {
			continue
		}
		in := append(bytes.Clone(finished), unhex(t, r.Record)...)
		if _, err := readAll(New(&memConn{r: bytes.NewReader(in)}, keys, &Config{Acks: true})); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", r.Comment, err)
		}
	}
}
