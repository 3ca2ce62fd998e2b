package mitm

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// cutAfter is how many bytes of records the entry has sent through the
// proxy when the proxy cuts the connection.
const cutAfter = 8 << 20

// testCuts: while a client uploads a large request through the tunnel, the
// proxy cuts the connection between the agents, by FIN or by RST. The
// backend must see an abort (connection reset by peer), never a clean EOF
// that would let it commit the truncated request, and must have received an
// exact prefix of the upload; the client must see an abort too; both agents
// must log that the session ended without CLOSE (truncated) or was reset,
// and that the stream was aborted.
func testCuts(t *testing.T, e *harness.Rig) {
	for i, c := range []struct {
		name string
		op   op
		log  string
	}{
		{"FIN", opCutFIN, "truncated"},
		// After a reset, the first read or write of the socket fails with
		// ECONNRESET and later reads see EOF: an agent that was writing when
		// the reset came reads EOF, and rightly reports a truncation.
		{"RST", opCutRST, peerEnded},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			runCut(t, e, c.op, c.log, 2000+uint64(i))
		})
	}
}

func runCut(t *testing.T, e *harness.Rig, how op, log string, seed uint64) {
	r := newRig(t, e, rigOptions{sinks: 1}) // the upload's backend only receives
	cl := dialClient(t, r.entry.Addr, seed)

	var passed int64
	fired := make(chan struct{})
	r.proxy.setPolicy(func(u *unit) []action {
		if u.conn == 0 && u.dir == i2r && u.kind == kindRecord && passed >= 0 {
			if passed += int64(len(u.b)); passed >= cutAfter {
				passed = -1
				close(fired)
				return []action{{op: how}} // this record is lost: mid-stream
			}
		}
		return forward(u.b)
	})

	start := time.Now()
	for cl.sent < 1<<30 {
		if err := cl.write(256 << 10); err != nil {
			break
		}
	}
	select {
	case <-fired:
	default:
		t.Fatalf("the client's upload ended (%v) before the cut", cl.writeErr)
	}
	t.Logf("client uploaded %d bytes before its write failed %v after the start: %v",
		cl.sent, time.Since(start).Round(time.Millisecond), cl.writeErr)

	cl.checkAborted(t)
	rc := checkBackendAborted(t, r.rec, 0, cl.pay, cl.sent)
	if rc.n < cutAfter/2 {
		t.Errorf("backend received only %d bytes; the cut came after %d", rc.n, cutAfter)
	}

	exitLine := r.exit.WaitMessage(t, 1, logWait, msgExitClosed)
	entryLine := r.entry.WaitMessage(t, 1, logWait, msgEntryLost)
	requireLine(t, "exit", exitLine, log)
	requireLine(t, "entry", entryLine, log)
	t.Logf("exit:  %s", exitLine.Raw)
	t.Logf("entry: %s", entryLine.Raw)

	r.checkStreamAborted(t)
	checkRecovers(t, r.entry.Addr)
}
