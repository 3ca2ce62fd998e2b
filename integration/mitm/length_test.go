package mitm

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// injectedLengths are record length fields outside [49, 65584]: zero, one
// below the minimum, one above the maximum, and the largest u32.
var injectedLengths = []uint32{0, 48, 65585, 0xFFFFFFFF}

// memoryBound is how much an agent's peak resident memory may grow while it
// is sent a bad length followed by garbage.
const memoryBound = 64 << 10 // KiB

// testLengths: once data flows, the proxy replaces a record by a bare
// length field out of range followed by up to 128 MiB of garbage. The
// receiving agent must close the connection on the header alone, at once
// (nothing else arrives that could complete a record of that length: a
// reader that waited would hang), without its memory growing, and log why.
func testLengths(t *testing.T, e *harness.Rig) {
	for _, d := range []dir{i2r, r2i} {
		for i, n := range injectedLengths {
			t.Run(fmt.Sprintf("%v/%d", d, n), func(t *testing.T) {
				t.Parallel()
				runLength(t, e, d, n, 1000+uint64(i)<<8|uint64(d))
			})
		}
	}
}

func runLength(t *testing.T, e *harness.Rig, d dir, length uint32, seed uint64) {
	r := newRig(t, e, rigOptions{})
	cl := dialClient(t, r.entry.Addr, seed)
	cl.exchange(t, 48<<10)

	receiver, who := r.exit, "exit"
	if d == r2i {
		receiver, who = r.entry, "entry"
	}
	kib := func(field string) int64 {
		t.Helper()
		n, err := harness.StatusKiB(receiver.Pid(), field)
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		return n
	}
	hwmBefore, rssBefore := kib("VmHWM"), kib("VmRSS")

	var injectedAt time.Time
	fired := make(chan struct{})
	done := false
	r.proxy.setPolicy(func(u *unit) []action {
		if u.conn != 0 || u.dir != d {
			return forward(u.b)
		}
		if done {
			return nil // the genuine stream stops here
		}
		if u.kind != kindRecord {
			return forward(u.b)
		}
		done = true
		injectedAt = time.Now()
		close(fired)
		return []action{{op: opForward, b: binary.BigEndian.AppendUint32(nil, length)}, garbage(128 << 20)}
	})
	cl.write(256 << 10)
	select {
	case <-fired:
	case <-time.After(20 * time.Second):
		t.Fatalf("no record came to replace")
	}

	pp := r.proxy.pipe(t, 0, time.Second)
	closedAt, why := pp.waitEnded(t, d.dst(), 10*time.Second)
	t.Logf("%s closed its connection %v after the length field %#x arrived (%v)",
		who, closedAt.Sub(injectedAt).Round(time.Microsecond), length, why)

	hwmAfter, rssAfter := kib("VmHWM"), kib("VmRSS")
	t.Logf("%s memory: VmRSS %d -> %d KiB, VmHWM %d -> %d KiB", who, rssBefore, rssAfter, hwmBefore, hwmAfter)
	if hwmAfter-hwmBefore > memoryBound || rssAfter-rssBefore > memoryBound {
		t.Errorf("%s grew its memory by more than %d MiB on a length field of %#x", who, memoryBound>>10, length)
	}
	if receiver.Exited() {
		t.Fatalf("%s exited on a length field of %#x", who, length)
	}

	var l harness.Line
	if d == i2r {
		l = r.exit.WaitMessage(t, 1, logWait, msgExitClosed)
	} else {
		l = r.entry.WaitMessage(t, 1, logWait, msgEntryLost)
	}
	requireLine(t, who, l, logLength)
	t.Logf("%s: %s", who, l.Raw)

	cl.checkAborted(t)
	checkBackendAborted(t, r.rec, 0, cl.pay, cl.sent)
	r.checkStreamAborted(t)
	checkRecovers(t, r.entry.Addr)
}
