package session

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

// readPipe is a recordConn over one end of a pipe whose other end, a
// record connection too, sends what feed is given.
type readPipe struct {
	m    *recordConn
	peer *frame.Conn
	wg   sync.WaitGroup
}

func newReadPipe(t *testing.T) *readPipe {
	a, b := net.Pipe()
	p := &readPipe{
		m:    newRecordConn(frame.New(a, frame.Keys{}, nil), &streamTable{}, nil),
		peer: frame.New(b, frame.Keys{}, nil),
	}
	p.wg.Add(1)
	go func() { // what m sends (its CLOSE), so that m.Close does not wait
		defer p.wg.Done()
		io.Copy(io.Discard, p.peer)
	}()
	t.Cleanup(func() {
		p.m.Close()
		p.peer.Close()
		p.wg.Wait()
	})
	return p
}

// feed has the peer send b and reads it through recordConn.Read in 13-byte
// pieces, as yamux's reads might split it; it returns Read's first error.
func (p *readPipe) feed(b []byte) error {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.peer.Write(b) // fails once m is closed, if m stopped reading
	}()
	buf := make([]byte, 13)
	for got := 0; got < len(b); {
		n, err := p.m.Read(buf)
		if err != nil {
			return err
		}
		got += n
	}
	return nil
}

func TestRecordConnPingFlood(t *testing.T) {
	p := newReadPipe(t)
	var stream []byte
	for range 500 { // data frames and ping answers (ACK) never count
		stream = append(stream, dataFrame(1, 0, 37)...)
		stream = append(stream, frameHeader(typePing, flagACK, 0, 7)...)
	}
	if err := p.feed(stream); err != nil {
		t.Fatalf("data and ping answers flagged: %v", err)
	}
	var pings []byte
	for i := range 1000 {
		pings = append(pings, frameHeader(typePing, flagSYN, 0, i)...)
	}
	if err := p.feed(pings); !errors.Is(err, errPingFlood) {
		t.Fatalf("1000 pings at once: err = %v, want errPingFlood", err)
	}
}

func TestPingBucketRate(t *testing.T) {
	var b pingBucket
	now := time.Now()
	for i := range 1000 { // keepalive-rate pings pass for ever
		if !b.take(now.Add(time.Duration(i) * time.Second)) {
			t.Fatalf("one ping a second refused at %d", i)
		}
	}
	later := now.Add(2000 * time.Second)
	n := 0
	for b.take(later) {
		n++
	}
	if n != pingBurst {
		t.Fatalf("%d pings allowed at once, want the burst of %d", n, pingBurst)
	}
}

// state is id's state in the table, nil if id is not in it.
func (tb *streamTable) state(id uint32) *streamState {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if e := tb.byID[id]; e != nil {
		return e.state
	}
	return nil
}

// TestRecordConnFINAckAndGoAway: the read side records the peer's SYN
// (acknowledged), ACK and FIN of tracked streams in the table, ignores
// untracked ones, and notices GoAway.
func TestRecordConnFINAckAndGoAway(t *testing.T) {
	p := newReadPipe(t)
	tab := p.m.streams
	// Stream 2 opened by the peer (SYN), stream 3 by this side (watch).
	tab.watch(3)
	for _, f := range [][]byte{dataFrame(2, flagSYN, 10), dataFrame(3, 0, 10)} {
		if err := p.feed(f); err != nil {
			t.Fatal(err)
		}
	}
	s2, s3 := tab.state(2), tab.state(3)
	if s2 == nil || s3 == nil {
		t.Fatalf("streams tracked: 2=%v 3=%v; want both", s2 != nil, s3 != nil)
	}
	if s2.pending() || !s3.pending() {
		t.Fatalf("pending: 2=%v 3=%v; want false (the peer's) true (no ACK yet)", s2.pending(), s3.pending())
	}
	if s2.is(statePeerFIN) || s3.is(statePeerFIN) {
		t.Fatal("FIN seen before any FIN")
	}
	if err := p.feed(frameHeader(typeWindowUpdate, flagACK, 3, 0)); err != nil {
		t.Fatal(err)
	}
	if s3.pending() || !s3.is(stateAcked) {
		t.Fatal("stream 3 still pending after the peer's ACK")
	}
	for _, f := range [][]byte{
		dataFrame(2, flagFIN, 5),
		frameHeader(typeWindowUpdate, flagFIN, 3, 0),
		frameHeader(typeWindowUpdate, flagFIN, 9, 0), // not tracked: not recorded
	} {
		if err := p.feed(f); err != nil {
			t.Fatal(err)
		}
	}
	if !s2.is(statePeerFIN) || !s3.is(statePeerFIN) || tab.state(9) != nil {
		t.Fatalf("FINs seen: 2=%v 3=%v, 9 tracked=%v; want true true false", s2.is(statePeerFIN), s3.is(statePeerFIN), tab.state(9) != nil)
	}
	tab.remove(2)
	if tab.state(2) != nil || len(tab.byID) != 1 {
		t.Fatal("remove left the stream in the table")
	}
	select {
	case <-p.m.goAway:
		t.Fatal("GoAway before one was sent")
	default:
	}
	for range 2 { // twice: no panic
		if err := p.feed(frameHeader(typeGoAway, 0, 0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-p.m.goAway:
	default:
		t.Fatal("GoAway not noticed")
	}
}

// recordPipe returns a recordConn over one end of a pipe, its record layer,
// and a channel that yields every byte the other end read, once m is
// closed.
func recordPipe(t *testing.T) (*recordConn, *frame.Conn, <-chan []byte) {
	a, b := net.Pipe()
	var k frame.Keys
	fc := frame.New(a, k, nil)
	rc := frame.New(b, frame.Keys{Send: k.Recv, Recv: k.Send, Transcript: k.Transcript}, nil)
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(rc)
		got <- all
	}()
	m := newRecordConn(fc, &streamTable{}, nil)
	t.Cleanup(func() { m.Close(); rc.Close() })
	return m, fc, got
}

// TestRecordConnFramesInRecords: recordConn carries yamux's frames
// unchanged, never more records than frames (a header is sealed with its
// body), and frames queued while the writer is busy share records.
func TestRecordConnFramesInRecords(t *testing.T) {
	m, fc, got := recordPipe(t)
	var want []byte
	hdr := frameHeader(typeData, 0, 1, 4096)
	frames := 0
	for i := range 100 {
		body := bytes.Repeat([]byte{byte(i)}, 4096)
		if _, err := m.Write(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Write(body); err != nil {
			t.Fatal(err)
		}
		want = append(append(want, hdr...), body...)
		frames++
	}
	ping := frameHeader(typePing, flagSYN, 0, 7) // ping: no body
	m.Write(ping)
	want = append(want, ping...)
	frames++
	m.Close()
	if all := <-got; !bytes.Equal(all, want) {
		t.Fatalf("the peer read %d bytes that differ from the %d bytes of frames written", len(all), len(want))
	}
	records := fc.Stats().RecordsSent - 2 // FINISHED and CLOSE
	if records > uint64(frames) {
		t.Fatalf("%d frames became %d records; a frame's header and body must share one", frames, records)
	}
	t.Logf("%d frames in %d records", frames, records)
}

// TestRecordConnLargeBodies: small bodies and large ones (sealed from the
// caller's buffer) arrive in order and intact, while the writer is busy
// with the frames before them, and the caller may reuse its buffer once
// Write returns, as yamux's send loop does.
func TestRecordConnLargeBodies(t *testing.T) {
	m, _, got := recordPipe(t)
	var want []byte
	body := make([]byte, 3*bigBody+5) // reused for every frame
	for i := range 60 {
		size := []int{10, 4096, bigBody, 3*bigBody + 5, 1}[i%5]
		hdr := frameHeader(typeData, 0, 1, size)
		for j := range size {
			body[j] = byte(i + j)
		}
		if _, err := m.Write(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Write(body[:size]); err != nil {
			t.Fatal(err)
		}
		want = append(append(want, hdr...), body[:size]...)
		clear(body) // what yamux does to its buffer with the next frame
	}
	m.Close()
	if all := <-got; !bytes.Equal(all, want) {
		t.Fatalf("the peer read %d bytes that differ from the %d bytes of frames written", len(all), len(want))
	}
}

// TestRecordConnLargeBodyAfterFailure: a large body waiting for the writer
// gets the record layer's error when the writer fails on the frames before
// it, instead of waiting for ever.
func TestRecordConnLargeBodyAfterFailure(t *testing.T) {
	a, b := net.Pipe()
	m := newRecordConn(frame.New(a, frame.Keys{}, nil), &streamTable{}, nil)
	t.Cleanup(func() { m.Close() })
	// A whole frame: the writer takes it and blocks, since nobody reads b.
	if _, err := m.Write(frameHeader(typePing, flagSYN, 0, 7)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Write(frameHeader(typeData, 0, 1, bigBody)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := m.Write(make([]byte, bigBody))
		done <- err
	}()
	waitFor(t, "the large body to wait for the writer", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.big != nil
	})
	b.Close() // the writer's Write fails
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Write of the large body succeeded after the connection failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write of the large body still waits 10 s after the writer failed")
	}
}

// TestRecordConnWatchesOwnSYN: a SYN this side writes enters its stream
// in the table, pending until the peer's ACK, even when yamux splits the
// header across Writes.
func TestRecordConnWatchesOwnSYN(t *testing.T) {
	m, _, _ := recordPipe(t)
	h := frameHeader(typeWindowUpdate, flagSYN, 5, 0)
	for _, part := range [][]byte{h[:3], h[3:9], h[9:]} {
		if _, err := m.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	s := m.streams.state(5)
	if s == nil || !s.pending() {
		t.Fatalf("after this side's SYN: stream 5 tracked %v, pending %v; want both", s != nil, s != nil && s.pending())
	}
	if m.streams.state(6) != nil {
		t.Fatal("a stream nobody opened is tracked")
	}
}
