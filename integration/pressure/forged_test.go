package pressure

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// forgedHellos makes n connections, n/sources from each of sources
// loopback addresses of 127.0.3.0/24, each sending a version 1 HELLO_I
// naming keyID (anyone who has seen a log line or a metric knows it), and
// then holding the connection in silence, as the slot-holding attack of
// issue 17 does. It returns how many got HELLO_R (the exit signed for
// them) and how many an ALERT, and the connections, which the caller
// closes.
func forgedHellos(t *testing.T, addr string, keyID [32]byte, n, sources int) (helloR, alert int, conns []net.Conn) {
	t.Helper()
	hellos := helloPool(t, keyID, 8)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(1+i%sources))}}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Errorf("forged hello %d: %v", i, err)
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			typ := byte(0)
			if _, err := c.Write(hellos[i%len(hellos)]); err == nil {
				typ, _, _ = readReply(c)
			}
			c.SetDeadline(time.Time{})
			mu.Lock()
			defer mu.Unlock()
			conns = append(conns, c)
			switch typ {
			case msgHelloR:
				helloR++
			case msgAlert:
				alert++
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return helloR, alert, conns
}

// TestForgedHellosHoldNoSlots: 64 forged hellos for an authorized key id,
// from 8 sources, each held open in silence (issue 17: before, they held
// every one of the 64 slots for the 10 s handshake timeout, and each cost
// an RSA signature, while real entries were answered busy). A real entry,
// which signs its hello, still gets its session within a few seconds; by
// default the forgers get at most an eighth of the slots (HELLO_R) and
// ALERT busy for the rest; with --require-signed-hello none gets HELLO_R,
// so none costs the exit an RSA signature.
func TestForgedHellosHoldNoSlots(t *testing.T) {
	const forged, sources = 64, 8
	for _, c := range []struct {
		name       string
		args       []string
		maxHelloR  int
		wantAlerts int
	}{
		{"version 1 allowed", nil, 64 / 8, forged - 64/8},
		{"require signed hello", []string{"--require-signed-hello"}, 0, forged},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := startRig(t, harness.HashEcho, c.args...)
			helloR, alerts, _ := forgedHellos(t, r.exit.Addr, r.entryPriv.keyID, forged, sources)
			t.Logf("%d forged hellos from %d sources: %d got HELLO_R, %d an ALERT", forged, sources, helloR, alerts)
			if helloR > c.maxHelloR || alerts < c.wantAlerts {
				t.Errorf("%d got HELLO_R and %d an ALERT; want at most %d HELLO_R and at least %d ALERTs", helloR, alerts, c.maxHelloR, c.wantAlerts)
			}
			start := time.Now()
			p := r.rig.StartEntry(t, r.exit.Addr, harness.Options{})
			p.WaitMessage(t, 1, 5*time.Second, "session established")
			t.Logf("a real entry's session came %v after it started, with the forged hellos held open", time.Since(start).Round(time.Millisecond))
		})
	}
}
