package mitm

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// testBlackholes: once data flows, the proxy forwards nothing more in
// either direction but keeps both connections open, as a dead path or a
// silent attacker would. The agent with a short keepalive must notice
// (yamux pings go unanswered: keepalive interval plus yamux's 10 s write
// timeout), tear the session down and say so; the client and the backend
// must see an abort.
func testBlackholes(t *testing.T, e *harness.Rig) {
	for i, c := range []struct {
		name     string
		detector side
	}{
		{"entry-detects", entrySide},
		{"exit-detects", exitSide},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			o := rigOptions{}
			if c.detector == entrySide {
				o.entryFlags = append(append([]string(nil), entryFlags...), "--keepalive", "1s")
			} else {
				o.exitExtra = []string{"--keepalive", "1s"}
			}
			runBlackhole(t, e, o, c.detector, 3000+uint64(i))
		})
	}
}

func runBlackhole(t *testing.T, e *harness.Rig, o rigOptions, detector side, seed uint64) {
	r := newRig(t, e, o)
	cl := dialClient(t, r.entry.Addr, seed)
	cl.exchange(t, 16<<10)

	start := time.Now()
	r.proxy.setPolicy(func(u *unit) []action {
		if u.conn == 0 {
			return nil
		}
		return forward(u.b)
	})
	cl.write(16 << 10)

	entryLine := r.entry.WaitMessage(t, 1, logWait, msgEntryLost)
	exitLine := r.exit.WaitMessage(t, 1, logWait, msgExitClosed)
	t.Logf("entry (after %v): %s", time.Since(start).Round(time.Millisecond), entryLine.Raw)
	t.Logf("exit:  %s", exitLine.Raw)
	const why = "keepalive|timeout|timed out|not responding"
	if detector == entrySide {
		requireLine(t, "entry", entryLine, why)
		requireLine(t, "exit", exitLine, peerEnded)
	} else {
		requireLine(t, "exit", exitLine, why)
		requireLine(t, "entry", entryLine, peerEnded)
	}

	cl.checkAborted(t)
	checkBackendAborted(t, r.rec, 0, cl.pay, cl.sent)
	r.checkStreamAborted(t)
	checkRecovers(t, r.entry.Addr)
}
