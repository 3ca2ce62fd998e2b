package session

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

func frameHeader(typ byte, flags uint16, id uint32, length int) []byte {
	h := make([]byte, headerLen)
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], uint32(length))
	return h
}

// dataFrame is a data frame whose body is made of bytes that look like
// ping headers, which must not count as frames.
func dataFrame(id uint32, flags uint16, body int) []byte {
	h := frameHeader(typeData, flags, id, body)
	for range body {
		h = append(h, typePing)
	}
	return h
}

// trackedHeaders runs b through a tracker in pieces of the given sizes
// (cycled) and returns the headers it completed, and whether it ended on a
// frame boundary.
func trackedHeaders(t *testing.T, b []byte, sizes []int) (headers [][]byte, boundary bool) {
	t.Helper()
	var tr tracker
	for i := 0; len(b) > 0; i++ {
		piece := b[:min(len(b), sizes[i%len(sizes)])]
		b = b[len(piece):]
		for len(piece) > 0 {
			n, complete := tr.step(piece)
			if n <= 0 || n > len(piece) {
				t.Fatalf("step took %d of a %d-byte piece", n, len(piece))
			}
			piece = piece[n:]
			if complete {
				headers = append(headers, bytes.Clone(tr.hdr[:]))
			}
		}
	}
	return headers, tr.atBoundary()
}

// TestTrackerPieces: tracker.step finds the same frame headers in a frame
// stream whatever the sizes of the pieces it comes in, bodies that look
// like headers included, and ends on a boundary after the last frame.
func TestTrackerPieces(t *testing.T) {
	var stream []byte
	var want [][]byte
	add := func(frame []byte) {
		want = append(want, frame[:headerLen])
		stream = append(stream, frame...)
	}
	for _, body := range []int{0, 1, 11, 12, 13, 100, 4095, 4096, 4097, bigBody + 3} {
		add(dataFrame(uint32(body)+1, flagSYN, body))
		add(frameHeader(typeWindowUpdate, flagACK, uint32(body)+1, 1<<20)) // length is a window, not a body
		add(frameHeader(typePing, flagSYN, 0, 99))
	}
	add(frameHeader(typeWindowUpdate, flagRST, 7, 0))
	add(dataFrame(3, flagFIN, 0))
	add(frameHeader(typeGoAway, 0, 0, 2))

	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]int, 64)
	for i := range random {
		random[i] = 1 + rng.IntN(200)
	}
	for _, sizes := range [][]int{{1}, {5}, {13}, {4096}, {len(stream)}, random} {
		name := fmt.Sprint(sizes)
		if len(sizes) > 1 {
			name = "random"
		}
		t.Run(name, func(t *testing.T) {
			got, boundary := trackedHeaders(t, stream, sizes)
			if len(got) != len(want) {
				t.Fatalf("%d headers seen, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("header %d: % x, want % x", i, got[i], want[i])
				}
			}
			if !boundary {
				t.Fatal("not at a frame boundary after the last frame")
			}
		})
	}
}

// TestTrackerMidFrame: atBoundary is false inside a header and inside a
// body, true between frames.
func TestTrackerMidFrame(t *testing.T) {
	f := dataFrame(1, 0, 10)
	var tr tracker
	if !tr.atBoundary() {
		t.Fatal("a new tracker is not at a boundary")
	}
	for i, c := range f {
		tr.step([]byte{c})
		if end := i == len(f)-1; tr.atBoundary() != end {
			t.Fatalf("after byte %d of %d: atBoundary = %v", i+1, len(f), !end)
		}
	}
}
