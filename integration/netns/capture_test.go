package netns

import (
	"bytes"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestCaptureNoPlaintextBetweenAgents captures all three links while an app
// sends a marker through the tunnel to an echoing backend: the marker must
// be on the app-entry and exit-db links and never on the entry-exit link,
// which must still carry at least as many payload bytes, the protocol's
// plaintext preface among them (so the capture did see the tunnel).
func TestCaptureNoPlaintextBetweenAgents(t *testing.T) {
	n := newTopology(t)
	requireTool(t, "tcpdump", "tcpdump")
	a := harness.NewRig(t)

	dir := t.TempDir()
	appEntry := startCapture(t, n.entry, ifEntryToApp, filepath.Join(dir, "app-entry.pcap"))
	entryExit := startCapture(t, n.entry, ifEntryToExit, filepath.Join(dir, "entry-exit.pcap"))
	exitDB := startCapture(t, n.exit, ifExitToDB, filepath.Join(dir, "exit-db.pcap"))

	n.startBackend(t)
	n.startExit(t, a)
	n.startEntry(t, a, exitAddr)

	marker := []byte("TUNNEL-MARKER-" + randHex(8))
	const count = 200
	h := startHelper(t, n.app, "marker", "-addr", entryAddr, "-marker", string(marker),
		"-count", strconv.Itoa(count), "-gap", "2ms")
	ev := h.waitEvent(t, time.Minute, "marker result", isEvent("marker"))
	if !ev.OK {
		t.Fatalf("marker exchange through the tunnel failed (%s): %s", ev.Class, ev.Err)
	}

	caps := map[string]*pcapSummary{
		"app-entry":  appEntry.stop(t),
		"entry-exit": entryExit.stop(t),
		"exit-db":    exitDB.stop(t),
	}
	for _, name := range []string{"app-entry", "entry-exit", "exit-db"} {
		s := caps[name]
		t.Logf("%s: %d packets, %d TCP payload bytes, %d flows, marker seen %d times",
			name, s.packets, s.payloadBytes, len(s.streams), s.count(marker))
	}
	for _, name := range []string{"app-entry", "exit-db"} {
		if got := caps[name].count(marker); got < count {
			t.Errorf("%s capture: marker seen %d times, want at least %d (the plaintext links must show it)",
				name, got, count)
		}
	}
	ee := caps["entry-exit"]
	if got := ee.count(marker); got != 0 {
		t.Errorf("entry-exit capture: marker seen %d times in the clear between the agents", got)
	}
	if lo := caps["app-entry"].payloadBytes; ee.payloadBytes < lo {
		t.Errorf("entry-exit capture has %d payload bytes, fewer than app-entry's %d: it missed the tunnel's traffic",
			ee.payloadBytes, lo)
	}
	preface := []byte("TUNNEL\x00\x02") // the agents speak version 2 (handshake/PROTOCOL-v2.md)
	if !bytes.Contains(ee.raw, preface) {
		t.Errorf("entry-exit capture lacks the protocol preface %q: it did not see the tunnel's connection", preface)
	}
	// The marker's two halves must not be there either: a tunnel that only
	// rearranged bytes would still show them.
	for _, half := range [][]byte{marker[:len(marker)/2], marker[len(marker)/2:]} {
		if got := ee.count(half); got != 0 {
			t.Errorf("entry-exit capture: %q seen %d times", half, got)
		}
	}
}
