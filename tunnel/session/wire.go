package session

// yamux's wire format, as far as this package reads and writes it: the
// 12-byte frame header (version u8 | type u8 | flags u16 | stream u32 |
// length u32) and, for data frames only, a body of length bytes. All yamux
// knowledge of the tunnel lives in this package; this file is the only one
// that knows the header's layout.

import (
	"encoding/binary"

	"github.com/tunnel-dev/tunnel/frame"
)

// BatchWrite is the largest Stream.Write that goes out as one frame in one
// batch of records: the frame's header and body fill the batch exactly.
const BatchWrite = frame.BatchPayload - headerLen

const (
	headerLen = 12

	typeData         = 0
	typeWindowUpdate = 1
	typePing         = 2
	typeGoAway       = 3

	flagSYN = 1
	flagACK = 2
	flagFIN = 4
	flagRST = 8
)

// header is one frame header.
type header [headerLen]byte

func (h *header) typ() byte      { return h[1] }
func (h *header) flags() uint16  { return binary.BigEndian.Uint16(h[2:]) }
func (h *header) stream() uint32 { return binary.BigEndian.Uint32(h[4:]) }

// bodyLen is the length of the body that follows h: the length field of a
// data frame; other frames have none (their length field means something
// else).
func (h *header) bodyLen() int {
	if h.typ() != typeData {
		return 0
	}
	return int(binary.BigEndian.Uint32(h[8:]))
}

// rstFrame is the frame that resets stream id: a window update with RST.
func rstFrame(id uint32) header {
	h := header{1: typeWindowUpdate}
	binary.BigEndian.PutUint16(h[2:], flagRST)
	binary.BigEndian.PutUint32(h[4:], id)
	return h
}

// tracker follows frame boundaries through a byte stream written or read
// in arbitrary pieces. The read side and the write side each have one.
type tracker struct {
	hdr      header
	have     int // bytes of hdr seen
	bodyLeft int // bytes of the current frame's body still to come
}

// atBoundary reports whether the bytes so far end on a frame boundary.
func (t *tracker) atBoundary() bool { return t.have == 0 && t.bodyLeft == 0 }

// step consumes the start of p up to the end of the current header or body,
// whichever comes first, and returns how many bytes it took; complete is
// true when those bytes completed a header, which is then t.hdr.
func (t *tracker) step(p []byte) (n int, complete bool) {
	if t.bodyLeft > 0 {
		n = min(len(p), t.bodyLeft)
		t.bodyLeft -= n
		return n, false
	}
	n = copy(t.hdr[t.have:], p)
	t.have += n
	if t.have < headerLen {
		return n, false
	}
	t.have = 0
	t.bodyLeft = t.hdr.bodyLen()
	return n, true
}
