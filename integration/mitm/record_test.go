package mitm

import (
	"crypto/rand"
	"encoding/binary"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// Log substrings of the record layer's errors (frame.ErrAuth, ErrLength).
const (
	logAuth   = "record authentication failed"
	logLength = "record length out of range"
)

// recordAttack is an attack on the records of one direction, once data
// flows. pol builds the proxy policy; it closes fired when it acts.
type recordAttack struct {
	name string
	pol  func(d dir, fired chan<- struct{}) policy
	// detectedBySender: the record goes back to its sender, which is the
	// agent that must notice (reflection); otherwise the receiver must.
	detectedBySender bool
	log              string // what the detecting agent logs
}

// flipAt flips the bit that pos picks in the first data record for which
// pos returns ok.
func flipAt(name string, pos func(b []byte) (off, bit int, ok bool), log string) recordAttack {
	return recordAttack{name: name, log: log, pol: func(d dir, fired chan<- struct{}) policy {
		match := func(u *unit) bool {
			_, _, ok := pos(u.b)
			return dataRecord(d)(u) && ok
		}
		return tamperFirst(match, func(u *unit) []action {
			off, bit, _ := pos(u.b)
			u.b[off] ^= 1 << bit
			return forward(u.b)
		}, fired)
	}}
}

var recordAttacks = []recordAttack{
	// The length field: its top bit puts it out of range, which the
	// receiver sees from the header alone; its lowest set bit makes the
	// record shorter, so the tag is checked over the wrong bytes.
	flipAt("flip/length-high", func(b []byte) (int, int, bool) { return 0, 7, true }, logLength),
	flipAt("flip/length-low", func(b []byte) (int, int, bool) {
		n := binary.BigEndian.Uint32(b)
		for bit := range 16 { // a length of 65536 has none: the next record will do
			if n&(1<<bit) != 0 {
				return 3 - bit/8, bit % 8, true
			}
		}
		return 0, 0, false
	}, logAuth),
	flipAt("flip/iv", func(b []byte) (int, int, bool) { return recHeaderLen + 5, 3, true }, logAuth),
	flipAt("flip/ciphertext-type-byte", func(b []byte) (int, int, bool) { return recHeaderLen + ivLen, 1, true }, logAuth),
	flipAt("flip/ciphertext-middle", func(b []byte) (int, int, bool) {
		return recHeaderLen + ivLen + (len(b)-recHeaderLen-ivLen-tagLen)/2, 0, true
	}, logAuth),
	flipAt("flip/tag", func(b []byte) (int, int, bool) { return len(b) - 1, 7, true }, logAuth),
	{name: "replay", log: logAuth, pol: func(d dir, fired chan<- struct{}) policy {
		return tamperFirst(dataRecord(d), func(u *unit) []action {
			return forward(u.b, append([]byte(nil), u.b...))
		}, fired)
	}},
	{name: "drop", log: logAuth, pol: func(d dir, fired chan<- struct{}) policy {
		return tamperFirst(dataRecord(d), func(u *unit) []action { return nil }, fired)
	}},
	{name: "swap", log: logAuth, pol: swapTwo},
	{name: "reflect", log: logAuth, detectedBySender: true, pol: func(d dir, fired chan<- struct{}) policy {
		// The record also goes on, so that only the reflection is wrong.
		return tamperFirst(dataRecord(d), func(u *unit) []action {
			return []action{{op: opForward, b: u.b}, reflectAct(append([]byte(nil), u.b...))}
		}, fired)
	}},
	{name: "forge", log: logAuth, pol: func(d dir, fired chan<- struct{}) policy {
		// A record of valid length and random content, before a genuine one.
		return tamperFirst(dataRecord(d), func(u *unit) []action {
			forged := make([]byte, recHeaderLen+ivLen+200+tagLen)
			rand.Read(forged)
			binary.BigEndian.PutUint32(forged, uint32(len(forged)-recHeaderLen))
			return forward(forged, u.b)
		}, fired)
	}},
}

// swapTwo holds the first data record of direction d on connection 0 and
// sends it after the record that follows it.
func swapTwo(d dir, fired chan<- struct{}) policy {
	var held []byte
	state := 0 // 0: waiting, 1: holding, 2: done
	return func(u *unit) []action {
		if u.conn != 0 || u.dir != d {
			return forward(u.b)
		}
		switch {
		case state == 0 && dataRecord(d)(u):
			held, state = u.b, 1
			return nil
		case state == 1 && u.kind == kindRecord:
			state = 2
			close(fired)
			return forward(u.b, held)
		}
		return forward(u.b)
	}
}

// testRecords: every attack on records, in both directions, once data
// flows. The agent that receives the bad record (or, for a reflection, the
// one that sent it) must close the session and log why; the client and the
// backend see an exact prefix of the other's bytes and a reset; and the
// agents reconnect afterwards.
func testRecords(t *testing.T, e *harness.Rig) {
	for _, d := range []dir{i2r, r2i} {
		for i, a := range recordAttacks {
			t.Run(d.String()+"/"+a.name, func(t *testing.T) {
				t.Parallel()
				runRecordAttack(t, e, d, a, uint64(i)<<8|uint64(d))
			})
		}
	}
}

func runRecordAttack(t *testing.T, e *harness.Rig, d dir, a recordAttack, seed uint64) {
	r := newRig(t, e, rigOptions{})
	cl := dialClient(t, r.entry.Addr, seed)
	cl.exchange(t, 48<<10) // data flows, the stream is open both ways

	fired := make(chan struct{})
	r.proxy.setPolicy(a.pol(d, fired))
	cl.write(256 << 10) // may fail once the tunnel is torn down
	select {
	case <-fired:
	case <-time.After(20 * time.Second):
		t.Fatalf("the attack never found its record")
	}

	cl.checkAborted(t)
	checkBackendAborted(t, r.rec, 0, cl.pay, cl.sent)

	// Who notices: the receiver of direction d, or its sender for a reflection.
	detector := exitSide
	if (d == r2i) != a.detectedBySender {
		detector = entrySide
	}
	exitLine := r.exit.WaitMessage(t, 1, logWait, msgExitClosed)
	entryLine := r.entry.WaitMessage(t, 1, logWait, msgEntryLost)
	if detector == exitSide {
		requireLine(t, "exit", exitLine, a.log)
		requireLine(t, "entry", entryLine, peerEnded)
	} else {
		requireLine(t, "entry", entryLine, a.log)
		requireLine(t, "exit", exitLine, peerEnded)
	}
	t.Logf("exit:  %s", exitLine.Raw)
	t.Logf("entry: %s", entryLine.Raw)

	r.checkStreamAborted(t)
	checkRecovers(t, r.entry.Addr)
}
