package pressure

import (
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestSilentSourceLeavesSlots: one source opens as many silent connections
// as --max-handshakes (64, the default), within its rate; a real entry from
// another source then gets its session at the first attempt, without an
// ALERT busy. (Loopback addresses other than 127.0.0.1 are the other
// sources: the silent connections come from 127.0.0.2, the entry from
// 127.0.0.1.)
func TestSilentSourceLeavesSlots(t *testing.T) {
	const silent = 64
	r := startRig(t, harness.HashEcho)
	before := r.mustStatus(t)
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	for range silent {
		c, err := d.Dial("tcp", r.exit.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// All but the per-source cap are refused at once (by the cap, or by
	// the rate, burst 20); give the exit up to a second to take them up.
	want := int64(silent - perSourceCap)
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if r.mustStatus(t).HandshakesRefused-before.HandshakesRefused >= want {
			break
		}
	}
	start := time.Now()
	entry, entryAddr := r.startEntry(t)
	t.Logf("silent source: entry session up %v after it started, with %d silent connections from 127.0.0.2 open",
		time.Since(start).Round(time.Millisecond), silent)
	if n := entry.Count(harness.Contains("busy")); n != 0 {
		t.Errorf("the entry was answered busy %d times before its session: the silent source held the handshake slots", n)
	}
	if n := entry.Count(harness.MessageIs("session established")); n != 1 {
		t.Errorf("entry logged %d sessions, want 1", n)
	}
	if err := harness.Exchange(entryAddr, 256<<10, 1, 30*time.Second); err != nil {
		t.Errorf("exchange through the entry: %v", err)
	}
	after := r.mustStatus(t)
	t.Logf("silent source: exit refused %d handshakes, counted %d failures", after.HandshakesRefused-before.HandshakesRefused,
		after.HandshakeFailures-before.HandshakeFailures)
	if got := after.HandshakesRefused - before.HandshakesRefused; got != want {
		t.Errorf("exit refused %d handshakes of the silent source, want %d (the rest may be in progress)", got, want)
	}
}
