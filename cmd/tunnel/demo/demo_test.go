package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRunDemo runs the demo and checks its claims against what it recorded, independently of
// the demo's own checks. Goroutine leaks are caught by TestMain's goleak.
func TestRunDemo(t *testing.T) {
	opt := defaultDemoOptions()
	if testing.Short() {
		opt.bulkBytes = 16 << 20
	}
	var out bytes.Buffer
	start := time.Now()
	res, err := runDemo(context.Background(), &out, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), opt)
	t.Logf("demo took %v; its output:\n%s", time.Since(start), out.String())
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()

	// The backend got exactly what the client sent.
	want := []byte(strings.Join(demoMessages, ""))
	if !bytes.Equal(res.sent, want) || !bytes.Equal(res.received, want) {
		t.Errorf("sent %q, backend received %q, want both %q", res.sent, res.received, want)
	}
	// No message, nor any 8-byte piece of one, on the wire; and there was a wire to look at.
	if len(res.wire) < len(want) {
		t.Fatalf("recorded only %d wire bytes", len(res.wire))
	}
	for _, msg := range demoMessages {
		for j := 0; j+8 <= len(msg); j++ {
			if bytes.Contains(res.wire, []byte(msg[j:j+8])) {
				t.Errorf("plaintext %q on the wire", msg[j:j+8])
			}
		}
		// Shown twice: as sent and as received.
		first := strconv.Quote(strings.SplitAfter(msg, "\n")[0])
		if n := strings.Count(text, first); n != 2 {
			t.Errorf("output shows %s %d times, want 2", first, n)
		}
	}
	for _, claim := range []string{"client sent", "on the wire entry→exit", "backend received",
		"Checked: the backend received exactly the 211 bytes", "MB/s", "Stopped the entry and the exit cleanly"} {
		if !strings.Contains(text, claim) {
			t.Errorf("output lacks %q", claim)
		}
	}

	// Bulk: all of it arrived intact, the text never showed on the wire, and the wire carried at
	// least the payload.
	if res.bulkSent == 0 || res.bulkReceived != res.bulkSent || res.bulkCRCRecv != res.bulkCRCSent {
		t.Errorf("bulk: sent %d (crc %08x), received %d (crc %08x)", res.bulkSent, res.bulkCRCSent, res.bulkReceived, res.bulkCRCRecv)
	}
	if res.bulkMarker {
		t.Error("bulk payload text seen on the wire")
	}
	if res.bulkOnWire < res.bulkSent {
		t.Errorf("wire carried %d bytes for %d of payload", res.bulkOnWire, res.bulkSent)
	}
}

// TestRunDemoCancelled checks that a cancelled demo returns an error and stops everything.
func TestRunDemoCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Run(ctx, new(bytes.Buffer), zerolog.Nop())
	if err == nil {
		t.Fatal("RunDemo with a cancelled context returned nil")
	}
}

// TestDemoChecksCanFail feeds the demo's detectors plaintext, so that a passing demo means
// something.
func TestDemoChecksCanFail(t *testing.T) {
	noise := make([]byte, 4096)
	rand.Read(noise)
	if p, found := plaintextOnWire(noise, demoMessages); found {
		t.Fatalf("found %q in random bytes", p)
	}
	for _, msg := range demoMessages {
		wire := append(bytes.Clone(noise), msg[len(msg)/2:len(msg)/2+8]...)
		wire = append(wire, noise...)
		if _, found := plaintextOnWire(wire, demoMessages); !found {
			t.Errorf("missed an 8-byte piece of %q", msg)
		}
	}

	// The streaming marker search finds the marker however the writes split it.
	marker := []byte(demoBulkLine[:demoMarkerLen])
	stream := append(append(bytes.Clone(noise), marker...), noise...)
	for _, cut := range []int{1, 7, 39, 40, 41, 4096, 4100, 4135, 4136, 4137} {
		w := &demoWire{marker: marker}
		w.Write(stream[:cut])
		for off := cut; off < len(stream); off += 13 { // odd-sized writes
			w.Write(stream[off:min(off+13, len(stream))])
		}
		if !w.sawMarker() {
			t.Errorf("cut at %d: marker not found", cut)
		}
		if w.count() != int64(len(stream)) {
			t.Errorf("cut at %d: count %d, want %d", cut, w.count(), len(stream))
		}
	}
	w := &demoWire{marker: marker}
	w.Write(noise)
	w.Write(marker[:20])
	w.Write(noise[:5])
	w.Write(marker[20:])
	if w.sawMarker() {
		t.Error("marker found where it was interrupted")
	}
}
